"""Every hot path, measured against a plain reference of the same computation in the same run (docs/benchmarks.md).

For each path: augforge's rate, the rate of a plain reference doing the same work on the same
networks and batch, and their ratio (ours / reference; 1.0 = no overhead). Ours and the reference
alternate (best of ``--repeats`` each) so drifting machine load hits both alike. Networks are
freshly initialised (the cost does not depend on the weights).

1. diffusion training step: ``DiffusionTrainLoop`` (flips, EMA, cond-drop, autocast, one host sync
   per log window) vs a bare loop: random batch -> q_sample -> UNet -> MSE -> backward -> AdamW.
2. mask sampling and image sampling per sampler: ``sample_masks`` / ``render_images`` (diffusers
   schedulers, per-pair random streams) vs the bare minimum: the same number of UNet evaluations on
   the batch and nothing else (the physical limit of that sampler on this device).
3. Diff-PGD per grad mode: ``diff_pgd`` with SDEdit purification (per-pair streams, as the attack
   stage) vs a plain loop with a hand-written DDIM SDEdit (``full`` backpropagates through the
   denoiser: ours with gradient checkpointing).

Ours and the reference always run the same networks in the same precision (``--precision``, auto as
the stages resolve it: bf16 on CUDA and on CPUs with native bf16): the inference rows (2, 3, 6) both use
:func:`augforge.models.inference.inference_net` (bf16 weights, no autocast; the float32 net at fp32), the
training rows both train float32 weights (under bf16 autocast at bf16). Every row records the parameter
dtype of the networks each side ran (``ours_dtype``, ``reference_dtype``). The run first measures the
roofline of the device, a dense GEMM in fp32 and bf16 (``gemm_tflops``); on the CPU the bf16 GEMM rate
stands in for the bf16 peak, so the UNet rows report their fraction of it.
4. PGD: ``pgd`` vs the textbook loop (``benchmarks/attack_throughput.py``).
5. segmentation training: ``TrainLoop`` vs the bare forward/backward loop
   (``benchmarks/seg_train_overhead.py``).
6. the UNet forward's FLOPs (``torch.utils.flop_counter``) and achieved TFLOP/s; on CUDA (or with
   ``--peak-tflops``) the fraction of the device's dense bf16 matmul peak; and the time 1600 pairs
   would take with the default sampler (the goal: under 2 minutes at 256 px on an H100; docs/benchmarks.md).

7. the FLOP budget of 1600 pairs with the default sampler (mask + image forwards) and the least
   time it needs at the device's bf16 peak (an H100's when the device's is unknown): how close
   to the physical limit a sampling rate is, and whether a goal is reachable at all.

With ``--compile``, also a diffusion training step and the UNet forward under ``torch.compile``
against the same eager computation (the compile time printed apart).

    python benchmarks/hot_paths.py [--compile] [--precision fp32]   # CPU: 32 px, tiny UNet, a few minutes
    python benchmarks/hot_paths.py --size 256 --model-size base --batch 64 --device cuda
    python benchmarks/hot_paths.py --size 256 --model-size base --flops-only   # the budget alone, any machine
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from attack_throughput import reference_pgd  # noqa: E402
from seg_train_overhead import bare_epoch, synthetic_pairs  # noqa: E402

from augforge.attacks import diff_pgd, pgd  # noqa: E402
from augforge.configs import SampleConfig  # noqa: E402
from augforge.diffusion.gaussian import GaussianDiffusion  # noqa: E402
from augforge.diffusion.train import EMA, DiffusionTrainLoop  # noqa: E402
from augforge.models.inference import attacked_net, inference_net, net_dtype  # noqa: E402
from augforge.models.segmenter import build_segmenter, segmenter_config  # noqa: E402
from augforge.models.unet import build_denoiser  # noqa: E402
from augforge.rng import PairStreams  # noqa: E402
from augforge.runtime import autocast, resolve_device, resolve_precision  # noqa: E402
from augforge.seg.augment import parse_augs  # noqa: E402
from augforge.seg.train import TrainLoop  # noqa: E402
from augforge.stages.sample import render_images, sample_masks  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def compare(name: str, unit: str, work: float, ours, reference, device: torch.device, repeats: int,
            nets: tuple[torch.nn.Module, torch.nn.Module]) -> dict:
    """Best-of-``repeats`` rates of two callables doing ``work`` units each, alternating, after a warm-up.

    ``nets``: the (main) network each side runs; their parameter dtypes are recorded in the row."""
    ours(), reference()
    best_ours = best_ref = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, seconds(ours, device))
        best_ref = min(best_ref, seconds(reference, device))
    row = {"path": name, "unit": unit, "ours": work / best_ours, "reference": work / best_ref,
           "ratio": best_ref / best_ours, "ours_dtype": str(net_dtype(nets[0])).removeprefix("torch."),
           "reference_dtype": str(net_dtype(nets[1])).removeprefix("torch.")}
    print(f"  {name:34s} {row['ours']:10.2f} {row['reference']:10.2f} {row['ratio']:7.3f}  {unit}", flush=True)
    return row


# --------------------------------------------------------------------------- plain references

def bare_diffusion_steps(net, diffusion: GaussianDiffusion, images01, masks, optimizer, batch: int, steps: int,
                         precision: str):
    """The minimal DDPM training step (DASP Eq. 8), ``steps`` times."""
    device = images01.device
    ab = diffusion.alphas_cumprod.to(device)
    loss_sum = torch.zeros((), device=device)
    for _ in range(steps):
        i = torch.randint(0, images01.shape[0], (batch,), device=device)
        x0, m = images01[i] * 2 - 1, masks[i]
        t = torch.randint(0, diffusion.timesteps, (batch,), device=device)
        noise = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device, precision):
            eps = net(torch.cat([x_t, m * 2 - 1], 1), t)
        loss = F.mse_loss(eps.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    float(loss_sum)


@torch.no_grad()
def bare_evaluations(net, x_in: torch.Tensor, evaluations: int) -> None:
    """Only the network evaluations a sampler needs: the physical limit of that sampler.

    ``net`` runs as given (an inference net: bf16 weights on CUDA, casts at its boundary)."""
    t = torch.full((x_in.shape[0],), 500, device=x_in.device)
    for _ in range(evaluations):
        net(x_in, t)


def plain_sdedit(net, ab: torch.Tensor, x01, mask, grid: list[int]):
    """DDIM (eta = 0) from q(x_{grid[0]} | x0) down the grid to x0, conditioned on the mask.

    ``net`` runs as given (the same inference net as ours); the DDIM arithmetic is float32."""
    x0 = x01 * 2 - 1
    x_t = ab[grid[0]].sqrt() * x0 + (1 - ab[grid[0]]).sqrt() * torch.randn_like(x0)
    cond = mask * 2 - 1
    for i, t in enumerate(grid):
        eps = net(torch.cat([x_t, cond], 1), torch.full((x0.shape[0],), t, device=x0.device)).float()
        x0_hat = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        nxt = grid[i + 1] if i + 1 < len(grid) else None
        x_t = x0_hat if nxt is None else ab[nxt].sqrt() * x0_hat + (1 - ab[nxt]).sqrt() * eps
    return ((x_t + 1) / 2).clamp(0, 1)


def plain_diff_pgd(seg, purify, x, y, eps: float, step: float, steps: int, grad: str):
    x_k = x.clone()
    for _ in range(steps):
        if grad == "bpda":
            with torch.no_grad():
                x_in = purify(x_k)
            x_in.requires_grad_(True)
            leaf = x_in
        else:
            leaf = x_k.detach().requires_grad_(True)
            x_in = purify(leaf)
        loss = F.binary_cross_entropy_with_logits(seg(x_in), y)
        g, = torch.autograd.grad(loss, leaf)
        x_k = torch.min(torch.max(x_k + step * g.sign(), x - eps), x + eps).clamp(0, 1).detach()
    with torch.no_grad():
        return purify(x_k)


# --------------------------------------------------------------------------- FLOP budget

H100_BF16_TFLOPS = BF16_PEAK_TFLOPS["H100"]


def forward_flops(net, x_in: torch.Tensor) -> int:
    """FLOPs of one forward of ``net`` on ``x_in`` (``torch.utils.flop_counter``: 2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x_in, torch.full((x_in.shape[0],), 500, device=x_in.device))
    return counter.get_total_flops()


def sampling_budget(mask_net, image_net, size: int, mask_steps: int, image_steps: int, guidance: float,
                    peak_tflops: float, pairs: int = 1600) -> dict:
    """The FLOPs ``pairs`` generated pairs take (mask then image, batch-1 forwards counted) and the time
    they need at least at ``peak_tflops``: the physical limit of ``sample`` with these settings."""
    device = next(image_net.parameters()).device
    mask_flops = forward_flops(mask_net, torch.zeros(1, 1, size, size, device=device))
    image_flops = forward_flops(image_net, torch.zeros(1, 4, size, size, device=device))
    per_pair = mask_steps * mask_flops + image_steps * image_flops * (1 if guidance == 1.0 else 2)  # CFG: 2 calls
    return {"pairs": pairs, "mask_gflops_per_forward": mask_flops / 1e9, "image_gflops_per_forward": image_flops / 1e9,
            "tflops_per_pair": per_pair / 1e12, "pflops_total": pairs * per_pair / 1e15, "peak_tflops": peak_tflops,
            "seconds_at_peak": pairs * per_pair / (peak_tflops * 1e12)}


def gemm_rates(device: torch.device, n: int = 2048, repeats: int = 5, calls: int = 3) -> dict[str, float]:
    """TFLOP/s of a dense n x n x n matmul in float32 and in bfloat16 on ``device``: the roofline of these
    cores, measured in the run that measures the networks (2 n^3 FLOPs per call, the best of ``repeats``
    timings of ``calls`` calls, the two dtypes alternating so drifting load hits both)."""
    g = torch.Generator(device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=g) for _ in range(2))
    operands = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = {k: float("inf") for k in operands}
    for _ in range(repeats):
        for k, (x, y) in operands.items():
            x @ y  # warm-up (and the library's first-call set-up)
            best[k] = min(best[k], seconds(lambda x=x, y=y: [x @ y for _ in range(calls)], device) / calls)
    return {k: 2 * n ** 3 / s / 1e12 for k, s in best.items()}


def device_peak(args, device: torch.device, roofline: dict[str, float] | None = None) -> float:
    """--peak-tflops, else the data-sheet bf16 peak of a known CUDA device, else the measured bf16 GEMM rate
    of ``roofline`` (the CPU's), else 0 (unknown)."""
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return (roofline or {}).get("bf16", 0.0)
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), 0.0)


def print_budget(args, mask_net, image_net, peak: float) -> dict:
    """The FLOP budget of 1600 pairs with the default sampler at this size and model, against the peak
    (this device's, or an H100's for reference when it is unknown)."""
    budget = sampling_budget(mask_net, image_net, args.size, args.mask_sample_steps, SampleConfig.sample_steps,
                             3.0, peak or H100_BF16_TFLOPS)  # guidance auto of a model trained for it: 2 calls
    where = f"the {peak:g} TFLOP/s peak" if peak else f"an H100's {H100_BF16_TFLOPS:g} TFLOP/s bf16 peak (reference)"
    print(f"  FLOP budget, {budget['pairs']} pairs at {args.size} px, UNet {args.model_size} "
          f"({budget['mask_gflops_per_forward']:.1f} + {budget['image_gflops_per_forward']:.1f} GFLOP per mask/image "
          f"forward; {args.mask_sample_steps} mask steps, {SampleConfig.sampler} {SampleConfig.sample_steps}): "
          f"{budget['pflops_total']:.3g} PFLOP = at least {budget['seconds_at_peak']:.3g} s at {where}", flush=True)
    return budget


def forward_rates(args, net, x_in: torch.Tensor, device: torch.device, roofline: dict[str, float]) -> dict:
    """The UNet forward (no grad) in the ways a sampler can run it: float32 weights (``--precision fp32``),
    float32 weights under bf16 autocast (what sampling did before bf16 inference copies), bf16 weights
    (``inference_net`` at bf16), and with ``--compile`` the bf16 copy under ``torch.compile`` (its compile
    time printed apart). Each is reported against the bf16 peak (a CPU's: its measured bf16 GEMM rate)."""
    peak = device_peak(args, device, roofline)
    flops = forward_flops(net, x_in)
    variants = {"float32 weights": lambda: bare_evaluations(net, x_in, 10),
                "float32 weights, bf16 autocast": lambda: _autocast_forwards(net, x_in, 10)}
    infer = inference_net(net, device, "bf16")
    variants["bf16 weights (inference_net)"] = lambda: bare_evaluations(infer, x_in, 10)
    if args.compile:
        compiled = torch.compile(infer)
        first = seconds(lambda: bare_evaluations(compiled, x_in, 1), device)
        print(f"  (torch.compile: first forward {first:.1f} s)", flush=True)
        variants["bf16 weights, torch.compile"] = lambda: bare_evaluations(compiled, x_in, 10)
    out = {"gflops": flops / 1e9, "batch": x_in.shape[0], "peak_tflops": peak or None, "variants": {}}
    print(f"UNet {args.model_size} forward, {args.size} px, batch {x_in.shape[0]}: {flops / 1e9:.1f} GFLOP")
    for name, fn in variants.items():
        fn()
        per_forward = min(seconds(fn, device) for _ in range(max(args.repeats, 2))) / 10
        tflops = flops / per_forward / 1e12
        out["variants"][name] = {"ms": per_forward * 1e3, "tflops": tflops, "peak_fraction": tflops / peak if peak else None}
        print(f"  {name:32s} {per_forward * 1e3:8.2f} ms  {tflops:7.1f} TFLOP/s"
              + (f"  {tflops / peak:6.1%} of peak" if peak else ""), flush=True)
    return out


@torch.no_grad()
def _autocast_forwards(net, x_in: torch.Tensor, evaluations: int) -> None:
    t = torch.full((x_in.shape[0],), 500, device=x_in.device)
    with autocast(x_in.device, "bf16"):
        for _ in range(evaluations):
            net(x_in, t)


# --------------------------------------------------------------------------- the benchmark

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--samplers", default="ddpm:1000,ddim:50,dpm-solver:25")
    ap.add_argument("--mask-sample-steps", type=int, default=SampleConfig.mask_sample_steps)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--seg-pairs", type=int, default=64)
    ap.add_argument("--seg-epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 dense peak (default: from the device name)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16: the arithmetic of ours and the "
                                                       "reference alike (as the stages' --precision)")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile against eager: a diffusion train step and the UNet forward")
    ap.add_argument("--flops-only", action="store_true",
                    help="print only the FLOP budget of 1600 pairs with the default sampler (no timed rows)")
    ap.add_argument("--forward-only", action="store_true",
                    help="only the UNet forward: float32 weights under autocast, bf16 weights, and (with --compile) "
                         "compiled bf16 weights, each in TFLOP/s and as a fraction of the bf16 peak")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    B, S = args.batch, args.size
    images01 = torch.rand(4 * B, 3, S, S, device=device)
    masks = (torch.rand(4 * B, 1, S, S, device=device) > 0.7).float()
    x_in = torch.cat([images01[:B] * 2 - 1, masks[:B] * 2 - 1], 1)  # an image UNet's input: x_t and the mask
    image_net = build_denoiser(args.model_size, 4, 3, S).to(device)
    mask_net = build_denoiser(args.model_size, 1, 1, S).to(device).eval()
    # what sample/attack run: bf16 copies at --precision bf16 (casts at the boundary), the nets themselves at fp32
    infer_mask = inference_net(mask_net, device, precision)
    gaussian = GaussianDiffusion()
    if args.flops_only:
        budget = print_budget(args, infer_mask, inference_net(image_net, device, precision), device_peak(args, device))
        if args.json:
            print(json.dumps(budget, indent=2))
        return
    # the roofline: what these cores' GEMM reaches in each dtype, in this run
    roofline = gemm_rates(device)
    print(f"roofline: dense 2048^3 GEMM {roofline['fp32']:.3f} TFLOP/s fp32, {roofline['bf16']:.3f} TFLOP/s bf16",
          flush=True)
    if args.forward_only:
        result = {**forward_rates(args, image_net.eval(), x_in, device, roofline), "gemm_tflops": roofline}
        if args.json:
            print(json.dumps(result, indent=2))
        return
    rows = []
    print(f"device {device}, {torch.get_num_threads()} threads, {S} px, UNet {args.model_size}, batch {B}, "
          f"precision {precision}")
    print(f"  {'path':34s} {'ours':>10s} {'reference':>10s} {'ratio':>7s}  unit")

    # 1. diffusion training step
    from augforge.data.dataset import PairSet

    pairs = PairSet((images01 * 255).to(torch.uint8), masks.to(torch.uint8), torch.zeros(4 * B, dtype=torch.bool, device=device))
    ref_net = copy.deepcopy(image_net)
    loop = DiffusionTrainLoop(image_net, gaussian, pairs, torch.optim.AdamW(image_net.parameters(), lr=1e-4,
                                                                             fused=device.type == "cuda"),
                              EMA(image_net, 0.999), B, torch.Generator(device).manual_seed(0),
                              condition_on_mask=True, cond_drop=0.1, precision=precision)
    ref_opt = torch.optim.AdamW(ref_net.parameters(), lr=1e-4, fused=device.type == "cuda")
    n = args.train_steps
    rows.append(compare("diffusion train step", "steps/s", n, lambda: loop.run(0, n, log_every=n),
                        lambda: bare_diffusion_steps(ref_net, gaussian, images01, masks, ref_opt, B, n, precision),
                        device, args.repeats, (image_net, ref_net)))
    if args.compile:  # torch.compile (inductor) against the same eager computation; first call = compile time
        eager_net = copy.deepcopy(ref_net)
        compiled_model = copy.deepcopy(ref_net)
        compiled_net = torch.compile(compiled_model)

        def train_loop(net, model):
            return DiffusionTrainLoop(net, gaussian, pairs, torch.optim.AdamW(model.parameters(), lr=1e-4,
                                                                              fused=device.type == "cuda"),
                                      EMA(model, 0.999), B, torch.Generator(device).manual_seed(0),
                                      condition_on_mask=True, cond_drop=0.1, precision=precision)

        compiled_loop, eager_loop = train_loop(compiled_net, compiled_model), train_loop(eager_net, eager_net)
        first = seconds(lambda: compiled_loop.run(0, 1, log_every=1), device)
        print(f"  (torch.compile: first training step {first:.1f} s)", flush=True)
        rows.append(compare("diffusion train step, --compile", "steps/s", n,
                            lambda: compiled_loop.run(0, n, log_every=n), lambda: eager_loop.run(0, n, log_every=n),
                            device, args.repeats, (compiled_model, eager_net)))
        compiled_model.eval(), eager_net.eval()
        eager_net = inference_net(eager_net, device, precision)
        compiled_model = inference_net(compiled_model, device, precision)
        compiled_net = torch.compile(compiled_model)
        first = seconds(lambda: bare_evaluations(compiled_net, x_in, 1), device)
        print(f"  (torch.compile: first no-grad forward {first:.1f} s)", flush=True)
        rows.append(compare("UNet forward x10, --compile", "forwards/s", 10,
                            lambda: bare_evaluations(compiled_net, x_in, 10),
                            lambda: bare_evaluations(eager_net, x_in, 10), device, args.repeats,
                            (compiled_model, eager_net)))
    image_net.eval()
    infer_image = inference_net(image_net, device, precision)  # the trained weights, as sample would load them

    # 2. sampling: masks, then images per sampler (one batch of B pairs)
    process = {"timesteps": 1000, "schedule": "cosine"}
    mask_steps = args.mask_sample_steps
    rows.append(compare(f"mask sampling ({mask_steps} steps)", "masks/s", B,
                        lambda: sample_masks(infer_mask, process, list(range(B)), size=S, steps=mask_steps, seed=0,
                                             device=device),
                        lambda: bare_evaluations(infer_mask, masks[:B] * 2 - 1, mask_steps), device, args.repeats,
                        (infer_mask, infer_mask)))
    image_process = {"timesteps": 1000, "schedule": "linear"}
    for spec in args.samplers.split(","):
        sampler, steps = spec.split(":")
        # DPM-Solver++(2M) and DDIM: one evaluation per step; DDPM: one per step
        rows.append(compare(f"image sampling {sampler} ({steps})", "pairs/s", B,
                            lambda s=sampler, k=int(steps): render_images(infer_image, image_process, masks[:B],
                                                                          list(range(B)), sampler=s, steps=k,
                                                                          guidance=1.0, seed=0),
                            lambda k=int(steps): bare_evaluations(infer_image, x_in, k), device, args.repeats,
                            (infer_image, infer_image)))

    # 3./4. attacks on a segmenter (Diff-PGD: K=10, gamma=1, T^s=3 on the 50-step DDIM grid)
    seg = attacked_net(build_segmenter(segmenter_config("unet", "resnet18")).to(device).eval(), precision)
    x, y = images01[:B], masks[:B]
    eps, step = 10 / 255, 1 / 255
    grid = [int(t) for t in gaussian.make_scheduler("ddim", 50).timesteps[-4:]]  # T^s + 1 = 4 calls
    ab = gaussian.alphas_cumprod.to(device)
    infer_image.requires_grad_(False)
    for grad in ("bpda", "full"):
        streams = PairStreams.for_pairs(0, list(range(B)), 11, device)  # per-pair SDEdit noise, as the stage
        ours_purify = lambda im, g=grad, st=streams: gaussian.sdedit(infer_image, im, mask01=y, generator=st,
                                                                     differentiable=g == "full",
                                                                     checkpoint=g == "full")
        plain_purify = lambda im: plain_sdedit(infer_image, ab, im, y, grid)
        rows.append(compare(f"diff-pgd {grad} ({args.attack_steps} steps)", "images/s", B,
                            lambda g=grad, p=ours_purify: diff_pgd(seg, x, y, eps=eps, step_size=step,
                                                                   steps=args.attack_steps, purify=p, grad=g),
                            lambda g=grad, p=plain_purify: plain_diff_pgd(seg, p, x, y, eps, step,
                                                                          args.attack_steps, g),
                            device, args.repeats, (infer_image, infer_image)))
    rows.append(compare(f"pgd ({args.attack_steps} steps)", "images/s", B,
                        lambda: pgd(seg, x, y, eps=eps, step_size=step, steps=args.attack_steps),
                        lambda: reference_pgd(seg, x, y, eps, step, args.attack_steps), device, args.repeats,
                        (seg, seg)))

    # 5. segmentation training (U-Net/ResNet-18, DASP loss, basic augmentation)
    train, val = synthetic_pairs(args.seg_pairs, S, device), synthetic_pairs(B, S, device)
    seg_model = build_segmenter(segmenter_config("unet", "resnet18")).to(device)
    bare_model = copy.deepcopy(seg_model)
    augment = parse_augs("basic")
    seg_loop = TrainLoop(seg_model, torch.optim.Adam(seg_model.parameters(), lr=1e-3, fused=device.type == "cuda"),
                         None, train, val, epochs=10 ** 6, batch_size=B, device=device,
                         generator=torch.Generator(device).manual_seed(0), augment=augment,
                         channels_last=device.type == "cuda", precision=precision)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    bare_gen = torch.Generator(device).manual_seed(0)
    work = args.seg_epochs * (args.seg_pairs // B) * B
    rows.append(compare("seg training (unet/resnet18)", "images/s", work,
                        lambda: [seg_loop.train_epoch() for _ in range(args.seg_epochs)],
                        lambda: [bare_epoch(bare_model, bare_opt, train, B, bare_gen, augment, device, precision)
                                 for _ in range(args.seg_epochs)], device, args.repeats, (seg_model, bare_model)))

    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
              "cpu", "threads": torch.get_num_threads(), "size": S, "model_size": args.model_size, "batch": B,
              "precision": precision, "gemm_tflops": roofline, "rows": rows}
    # 6. the UNet forward's FLOPs and achieved rate, against the bf16 peak (a CPU's: its bf16 GEMM rate) and the
    # GEMM rate of the dtype it ran in
    peak = device_peak(args, device, roofline)
    flops = forward_flops(infer_image, x_in)
    per_forward = min(seconds(lambda: bare_evaluations(infer_image, x_in, 10), device) for _ in range(3)) / 10
    achieved = flops / per_forward / 1e12
    own_gemm = roofline["bf16" if net_dtype(infer_image) == torch.bfloat16 else "fp32"]
    result["unet_forward"] = {"gflops": flops / 1e9, "ms": per_forward * 1e3, "achieved_tflops": achieved,
                              "peak_tflops": peak or None, "peak_fraction": achieved / peak if peak else None,
                              "gemm_fraction": achieved / own_gemm}
    print(f"  UNet forward (batch {B}): {flops / 1e9:.2f} GFLOP in {per_forward * 1e3:.2f} ms = {achieved:.3f} "
          f"TFLOP/s, {achieved / own_gemm:.1%} of this device's {net_dtype(infer_image)} GEMM rate"
          + (f", {achieved / peak:.1%} of the {peak:.3g} TFLOP/s bf16 peak" if peak else
             " (no peak known for this device: --peak-tflops)"))
    default = f"image sampling {SampleConfig.sampler} ({SampleConfig.sample_steps})"
    by_path = {r["path"]: r for r in rows}
    if default in by_path:
        mask_rate = by_path[f"mask sampling ({mask_steps} steps)"]["ours"]
        result["seconds_for_1600_pairs"] = 1600 / mask_rate + 1600 / by_path[default]["ours"]
        print(f"  1600 pairs with the defaults ({mask_steps} mask steps, {SampleConfig.sampler} "
              f"{SampleConfig.sample_steps}) at batch {B}: {result['seconds_for_1600_pairs']:.0f} s")
    result["unet_forward"]["dtype"] = str(net_dtype(infer_image)).removeprefix("torch.")
    result["budget"] = print_budget(args, infer_mask, infer_image, peak)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
