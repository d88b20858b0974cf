"""Devices, seeding, autocast, atomic files and torch.distributed helpers shared by the stages."""

from __future__ import annotations

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


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
    return info


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
