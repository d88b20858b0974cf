"""CUDA-only checks of the GPU paths (skipped without a GPU; the device run executes them).

- the bf16 inference copy samples the same images as the float32 network on the same weights,
  within 1 intensity level mean per image (the measured figure is printed);
- per-pair random streams on CUDA: a pair does not depend on its batch (DDPM, and DDIM with guidance:
  within rounding across batch sizes, bit-identical at one batch size);
- Diff-PGD with full gradients through the bf16 purifier gives a float32 gradient;
- ``benchmarks/hot_paths.py`` runs to the end at toy size on CUDA with bf16 on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.models.inference import inference_net, net_dtype
from augforge.models.unet import build_denoiser
from augforge.ranges import to_uint8_images
from augforge.rng import PairStreams
from augforge.stages.sample import render_images, sample_masks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def _nets():
    torch.manual_seed(0)
    device = torch.device("cuda")
    image_net = build_denoiser("tiny", 4, 3, SIZE).to(device).eval()
    mask_net = build_denoiser("tiny", 1, 1, SIZE).to(device).eval()
    return device, image_net, mask_net


def _masks(device, n: int):
    g = torch.Generator(device).manual_seed(1)
    return (torch.rand(n, 1, SIZE, SIZE, device=device, generator=g) > 0.6).float()


def _trained_image_net(device, steps: int = 400):
    """The tiny image UNet trained briefly on synthetic polyps (a random network's ε is arbitrary, and DDIM
    amplifies its rounding at large t: the comparison means something only for a network that denoises)."""
    from augforge.data.dataset import PairSet
    from augforge.data.synthetic import synthetic_pairs
    from augforge.diffusion.train import EMA, DiffusionTrainLoop

    images, masks = synthetic_pairs(64, size=SIZE, seed=0)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    masks = torch.from_numpy(masks).reshape(64, 1, SIZE, SIZE).to(device)
    pairs = PairSet(images, (masks > 0).to(torch.uint8), torch.zeros(64, dtype=torch.bool, device=device))
    torch.manual_seed(0)
    net = build_denoiser("tiny", 4, 3, SIZE).to(device)
    ema = EMA(net, 0.99)
    loop = DiffusionTrainLoop(net, GaussianDiffusion(), pairs, torch.optim.AdamW(net.parameters(), lr=2e-3), ema, 32,
                              torch.Generator(device).manual_seed(0), condition_on_mask=True)
    loop.run(0, steps, log_every=steps)
    net.load_state_dict(ema.state_dict())
    return net.eval()


def test_bf16_inference_matches_float32_within_one_level():
    device = torch.device("cuda")
    image_net = _trained_image_net(device)
    bf16 = inference_net(image_net, device, "bf16")
    assert net_dtype(bf16) == torch.bfloat16 and net_dtype(image_net) == torch.float32
    masks = _masks(device, 8)
    process = {"timesteps": 1000, "schedule": "linear"}
    kwargs = dict(sampler="ddim", steps=20, guidance=1.0, seed=0)
    ref = to_uint8_images(render_images(image_net, process, masks, list(range(8)), **kwargs)).astype(float)
    ours = to_uint8_images(render_images(bf16, process, masks, list(range(8)), **kwargs)).astype(float)
    per_image = abs(ours - ref).mean(axis=(1, 2, 3))
    print(f"bf16 vs float32, DDIM 20 steps, tiny UNet trained 400 steps, {SIZE} px: mean |diff| per image "
          f"max {per_image.max():.3f}, mean {per_image.mean():.3f} intensity levels")
    assert per_image.max() <= 1.0


def test_pair_does_not_depend_on_the_batch_on_cuda():
    device, image_net, mask_net = _nets()
    image_net, mask_net = inference_net(image_net, device, "bf16"), inference_net(mask_net, device, "bf16")
    mask_process, image_process = {"timesteps": 1000, "schedule": "cosine"}, {"timesteps": 1000, "schedule": "linear"}

    def pairs(indices, sampler="ddpm", guidance=1.0):
        masks, _ = sample_masks(mask_net, mask_process, indices, size=SIZE, steps=10, seed=3, device=device)
        images = render_images(image_net, image_process, masks, indices, sampler=sampler, steps=10,
                               guidance=guidance, seed=3)
        return masks, to_uint8_images(images).astype(float)

    # plain DDPM, and the guided path (cond and null halves in one doubled batch) with DDIM
    for sampler, guidance in (("ddpm", 1.0), ("ddim", 3.0)):
        masks8, images8 = pairs(list(range(8)), sampler, guidance)
        masks3, images3 = pairs([5, 2, 7], sampler, guidance)
        for k, i in enumerate([5, 2, 7]):
            # bf16 convolutions may round differently at another batch size: allow a rare flipped pixel
            assert float((masks3[k] != masks8[i]).float().mean()) <= 1e-3
            assert abs(images3[k] - images8[i]).mean() <= 1.0, (sampler, guidance)
        assert float((masks8[0] != masks8[1]).float().mean()) > 0.05  # different pairs differ
        # at one batch size (as sample pads every batch) the guided pair is bit-identical whatever its batch
        masks3b, images3b = pairs([7, 5, 2], sampler, guidance)
        assert (images3b[0] == images3[2]).all() and (masks3b[1] == masks3[0]).all()


def test_full_gradient_through_the_bf16_purifier():
    device, image_net, _ = _nets()
    net = inference_net(image_net, device, "bf16")
    diffusion = GaussianDiffusion()
    x = torch.rand(4, 3, SIZE, SIZE, device=device, requires_grad=True)
    out = diffusion.sdedit(net, x, mask01=_masks(device, 4), generator=PairStreams.for_pairs(0, range(4), 11, device),
                           differentiable=True, checkpoint=True)
    assert out.dtype == torch.float32
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert g.dtype == torch.float32 and torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_hot_paths_runs_on_cuda_at_toy_size():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hot_paths.py"), "--device", "cuda", "--batch", "4",
                        "--train-steps", "2", "--samplers", "ddpm:3,ddim:2,dpm-solver:2", "--mask-sample-steps", "2",
                        "--attack-steps", "1", "--seg-pairs", "8", "--seg-epochs", "1", "--repeats", "1", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    rows = {row["path"]: row for row in result["rows"]}
    assert len(rows) == 9 and all(row["ours"] > 0 and row["reference"] > 0 for row in rows.values())
    for path, row in rows.items():
        assert row["ours_dtype"] == row["reference_dtype"], row
        inference = path.startswith(("mask sampling", "image sampling", "diff-pgd"))
        assert row["ours_dtype"] == ("bfloat16" if inference else "float32"), row
    assert result["unet_forward"]["dtype"] == "bfloat16"
