"""Devices, seeding, autocast, atomic files and torch.distributed helpers shared by the stages."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from augforge.errors import AugforgeError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info().local_rank if dist_info().world_size > 1 else 0)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AugforgeError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name == "cuda" and dist_info().world_size > 1:
        return torch.device("cuda", dist_info().local_rank)  # torchrun: one device per process
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise AugforgeError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` (CUDA or the CPU) for ``precision`` "bf16" (:func:`resolve_precision`),
    a no-op for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Fix the global sources (python, numpy, torch); stage code passes explicit generators anyway."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator_for(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from (seed, *keys) through numpy's SeedSequence (stable across machines)."""
    entropy = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
    return g


# --------------------------------------------------------------------------- files

def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write to a temporary name in the same folder, fsync (unless the caller syncs a whole batch
    itself, ``fsync=False``), then rename over ``path``; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str = "file") -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AugforgeError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AugforgeError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank information from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device, timeout: timedelta | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    ``timeout``: how long a collective (a barrier) may wait; torch's default when None.
    """
    info = dist_info()
    if info.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend, **({"timeout": timeout} if timeout else {}))
        atexit.register(_leave_process_group)
    return info


def leave_distributed() -> None:
    """The end of a successful torchrun command: every rank waits until all have finished (rank 0 may
    still be writing the last checkpoint), then all destroy the process group together.

    Without the meeting, a rank that finished first tore down gloo while rank 0 was still busy and
    could abort in C++ ("terminate called without an active exception": 1 in 30 launches of a 4-step
    two-process train-mask-diffusion before, 0 in 100 after).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _leave_process_group() -> None:
    """Destroy the process group before the interpreter tears down, when a command ended without
    :func:`leave_distributed` (an error: torchrun stops the other ranks anyway)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> float:
    """The mean of a scalar tensor over the torchrun ranks (itself outside torchrun), on the host."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any torchrun rank (an all-reduce MAX; ``flag`` itself outside torchrun).

    One decision for all ranks (e.g. "the time budget is spent"): every rank must call it at the same
    point, and each then acts alike, so no rank takes a step that another waits for in vain.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor([int(flag)], dtype=torch.int32,
                             device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())
    return bool(flag)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def rank_zero_first(make):
    """``make()`` on rank 0, then, once it has returned, on the other torchrun ranks (just ``make()``
    outside torchrun): rank 0 judges and creates an output folder, the others then open it as a
    same-run folder instead of racing rank 0 for it."""
    if dist_info().is_main:
        made = make()
        barrier()
        return made
    barrier()
    return make()


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; combined with torchrun ranks by :func:`work_shard`."""
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise AugforgeError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise AugforgeError(f"--shard {shard!r}: need 0 <= i < n")
    return i, n


def work_shard(shard: str) -> tuple[int, int]:
    """The slice (index, count) of the work this process does: ``--shard`` times torchrun ranks."""
    i, n = parse_shard(shard)
    info = dist_info()
    return i * info.world_size + info.rank, n * info.world_size


# --------------------------------------------------------------------------- speed choices

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 dot products in hardware: CUDA's bf16 support, or a CPU with
    AVX512_BF16 or AMX-BF16 (Linux: the flags of /proc/cpuinfo; elsewhere False). Without them a CPU
    emulates bf16 and runs slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = (cpu_info("flags") or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_info(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo ("flags", "model name"); None off Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def resolve_precision(mode: str, device: torch.device | str) -> str:
    """``--precision``: "fp32" or "bf16" as asked; ``auto``: bf16 where the device has native bf16 dot
    products (:func:`native_bf16`), else fp32. Measured on both kinds of device (docs/benchmarks.md), bf16
    is the faster path of every network on them (training under autocast, inference with bf16 weights) at
    the quality of fp32. One-line error for another value."""
    if mode not in PRECISIONS:
        raise AugforgeError(f"--precision must be auto, fp32 or bf16, got {mode!r}")
    if mode != "auto":
        return mode
    return "bf16" if native_bf16(device) else "fp32"

COMPILE_MODES = ("auto", "on", "off")

# Break-even points of ``--compile auto`` on CUDA: the planned work below which compiling is expected to
# cost more wall time than it saves. Estimates, not measurements of compiled runs (docs/benchmarks.md):
# - sampling, in batches: measured on an H200 (docs/benchmarks.md, 256 px, batch 64, UNet `small`),
#   compiling a bf16 UNet forward took 27 s and cut a forward from 127.5 to 72.5 ms (55 ms saved).
#   `sample` compiles two UNets (≈ 54 s) and a default batch runs 100 Bernoulli + 50 DDIM forwards,
#   i.e. ≈ 8.3 s saved per batch: ≈ 7 batches repay the compile; rounded up to 8. At smaller images or
#   batches a forward saves less and more batches are needed (unmeasured).
# - diffusion training, in optimizer steps: compiled training is unmeasured. Assuming the training step
#   gains what the forward gained (1.76x) from the eager 4.8 steps/s (256 px, batch 32, H200; issue 24),
#   a step saves ≈ 90 ms; with a forward+backward compile taken as ≈ 2x the forward's (≈ 60 s, an
#   assumption), ≈ 670 steps repay it; rounded up to 1000 (the default 20000-step run compiles).
# - segmentation training, in optimizer steps: unmeasured. A U-Net/ResNet-34 step at batch 16 takes
#   ≈ 16 ms at ~1000 images/s; assuming compile saves 30 % of it (≈ 5 ms) for a ≈ 25 s compile, ≈ 5000
#   steps repay it (the default 200 epochs over Kvasir's 800 training pairs are 10000 steps).
# On a CPU compiling does not pay enough (docs/benchmarks.md, "Compiling on the CPU", bf16 at 64 px: both
# train steps 0.92-0.99x after 44-67 s of compiling; the sampler's UNet forward 1.16x after 29 s, i.e. about
# 37 batches of 16 to repay the two UNets and 9 % off `sample -n 1600`, with a C++ compiler required), so auto
# is off there.
TRAIN_DIFFUSION_BREAK_EVEN_STEPS = 1000
TRAIN_SEG_BREAK_EVEN_STEPS = 5000
SAMPLE_BREAK_EVEN_BATCHES = 8


def check_compile_mode(mode: str) -> str:
    """``--compile``: one of :data:`COMPILE_MODES`, else a one-line error."""
    if mode not in COMPILE_MODES:
        raise AugforgeError(f"--compile must be auto, on or off, got {mode!r}")
    return mode


def compile_choice(mode: str, device: torch.device | str, planned: int, *, break_even: int,
                   unit: str = "steps") -> tuple[bool, str]:
    """Whether to ``torch.compile`` and why (one line, for the log and the run's record).

    ``on``/``off``: as asked (``on`` compiles on any device, the CPU included). ``auto``: off on a
    device other than CUDA (the CPU and MPS, where compiling has not paid: docs/benchmarks.md); on
    CUDA, on when the ``planned`` work (``unit``: optimizer steps, sampling batches) reaches
    ``break_even`` (the estimates above), else off. A pure function of its arguments.
    """
    check_compile_mode(mode)
    if mode != "auto":
        return mode == "on", f"--compile {mode}"
    kind = torch.device(device).type
    if kind != "cuda":
        return False, f"auto: off on {kind} (compiling costs more than it saves off CUDA)"
    if planned < break_even:
        return False, f"auto: {planned} {unit} planned, under the {break_even} estimated to repay the compile"
    return True, f"auto: {planned} {unit} planned, at least the {break_even} estimated to repay the compile"


def compile_decision(name: str, mode: str, device: torch.device | str, planned: int, *, break_even: int,
                     unit: str = "steps") -> tuple[bool, dict, str | None]:
    """A stage's compile choice (:func:`compile_choice`) as (used, record, message). record: what the run
    records (config.json, dataset.json, the --json summary); message: the one log line, or None for a
    CPU run under ``auto`` (never compiled: recorded, not said, so every CPU run is not a line longer)."""
    used, reason = compile_choice(mode, device, planned, break_even=break_even, unit=unit)
    say = mode != "auto" or torch.device(device).type == "cuda"
    message = f"{name}: compile {'on' if used else 'off'} ({reason})" if say else None
    return used, {"mode": mode, "used": used, "reason": reason}, message


def adam_kwargs(device: torch.device | str) -> dict:
    """Implementation keywords for ``torch.optim.Adam``/``AdamW``: the fused kernel on CUDA (one launch
    for all parameters), the plain per-parameter loop elsewhere (what the CPU always ran, so CPU results
    stay as they were)."""
    if torch.device(device).type == "cuda":
        return {"fused": True}
    return {"foreach": False}


def describe_hardware(device: str) -> str:
    """The machine a run used, in words: the GPU, or the CPU model and core count (and torch's version)."""
    import platform

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = cpu_info("model name") or platform.processor() or "CPU"
    return f"{cpu}, {os.cpu_count()} cores, no GPU (torch {torch.__version__})"
