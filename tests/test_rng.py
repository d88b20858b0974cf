"""Per-pair counter-based streams, the bf16 inference wrapper and the background dataset writer (CPU)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from augforge.data.dataset import DatasetWriter, load_pairs, read_dataset, read_manifest
from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.models.inference import CastNet, inference_net
from augforge.models.unet import build_denoiser
from augforge.rng import PairStreams, rand_like


def test_a_pairs_numbers_depend_only_on_its_key():
    whole = PairStreams.for_pairs(3, [0, 1, 2, 3, 4], stream=1)
    part = PairStreams.for_pairs(3, [3, 1], stream=1)
    u_whole, u_part = whole.uniform((2, 8, 8)), part.uniform((2, 8, 8))
    assert u_whole.shape == (5, 2, 8, 8) and u_whole.dtype == torch.float32
    assert torch.equal(u_part[0], u_whole[3]) and torch.equal(u_part[1], u_whole[1])
    z_whole, z_part = whole.normal((3, 4, 4)), part.normal((3, 4, 4))  # the second draw
    assert torch.equal(z_part[0], z_whole[3])
    # other seeds, streams and draws give other numbers
    assert not torch.equal(PairStreams.for_pairs(4, [0], 1).uniform((2, 8, 8))[0], u_whole[0])
    assert not torch.equal(PairStreams.for_pairs(3, [0], 2).uniform((2, 8, 8))[0], u_whole[0])
    assert not torch.equal(whole.uniform((2, 8, 8)), u_whole)
    assert whole.draws == 3


def _first_draw_collisions(streams: PairStreams, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Pairs (by position) whose whole first uniform draw is bit-identical (sort the rows, compare neighbours)."""
    words = (streams.uniform(shape).flatten(1) * 2.0 ** 24).long()  # (B, n >= 2) exact 24-bit integers
    key = words[:, 0] * 2 ** 24 + words[:, 1]  # the first two words, exactly (48 bits)
    order = torch.argsort(key)
    rows, key = words[order], key[order]
    same = (key[1:] == key[:-1]) & (rows[1:] == rows[:-1]).all(dim=1)
    return [(int(order[i]), int(order[i + 1])) for i in torch.nonzero(same).flatten().tolist()]


def test_pair_streams_hold_64_bits_no_two_of_200k_pairs_share_a_draw():
    """Issue 23.4: with the old layout the per-draw state was 32 bits (the second word a function of
    the first), so pairs 45651 and 55268 of seed 0 drew the same x_T, and ~5 pairs of 200 k collided."""
    regression = PairStreams.for_pairs(0, [45651, 55268], stream=1)
    u = regression.uniform((3, 4, 4))
    assert not torch.equal(u[0], u[1]) and float((u[0] - u[1]).abs().max()) > 0.1
    streams = PairStreams.for_pairs(0, list(range(200_000)), stream=1)
    assert _first_draw_collisions(streams, (4,)) == []  # 96 bits a pair: a collision would be a broken key


def test_stream_statistics():
    s = PairStreams.for_pairs(0, list(range(16)), 0)
    u = s.uniform((64, 64))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) * 12 - 1) < 0.01
    flat = u.flatten(1)
    neighbours = torch.corrcoef(torch.stack([flat[:, :-1].flatten(), flat[:, 1:].flatten()]))[0, 1]
    assert abs(float(neighbours)) < 0.01
    pairs = torch.corrcoef(flat)  # (16, 16): different pairs are uncorrelated
    assert float((pairs - torch.eye(16)).abs().max()) < 0.05
    z = s.normal((64, 64))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01 and abs(float((z ** 4).mean()) - 3) < 0.1
    with pytest.raises(ValueError, match="per-element generators"):
        rand_like(torch.zeros(3, 1, 2, 2), PairStreams.for_pairs(0, [0, 1], 0))


def test_bernoulli_sampler_with_streams_does_not_depend_on_the_batch():
    diffusion = BernoulliDiffusion(timesteps=50)

    def model(y_t, t):  # "few flips": the y_0 estimate follows the random y_t
        return torch.full_like(y_t, -4.0) + 0.01 * t.view(-1, 1, 1, 1)

    def draw(indices):
        return diffusion.sample_loop(model, (len(indices), 1, 16, 16), steps=6,
                                     generator=PairStreams.for_pairs(5, indices, 0))

    masks, probs = draw([0, 1, 2, 3])
    sub_masks, sub_probs = draw([2, 0])
    assert torch.equal(sub_masks[0], masks[2]) and torch.equal(sub_probs[1], probs[0])
    assert not torch.equal(masks[0], masks[1])


def test_ddpm_step_with_streams_is_diffusers_step_with_that_noise(monkeypatch):
    import diffusers.schedulers.scheduling_ddpm as ddpm

    diffusion = GaussianDiffusion(timesteps=100)
    scheduler = diffusion.make_scheduler("ddpm", 10)
    x_t, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in scheduler.timesteps.tolist()[:3] + [0]:
        streams = PairStreams.for_pairs(0, [4, 9], 2)
        noise = PairStreams.for_pairs(0, [4, 9], 2).normal((3, 8, 8))
        x0_hat = diffusion.predict_x0(x_t, t, eps).clamp(-1, 1)
        ours = diffusion._ddpm_step(scheduler, x_t, t, x0_hat, streams)
        monkeypatch.setattr(ddpm, "randn_tensor", lambda *a, **k: noise)
        theirs = scheduler.step(eps, t, x_t).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert streams.draws == (1 if t > 0 else 0)


def test_ddpm_sampling_with_streams_does_not_depend_on_the_batch():
    diffusion = GaussianDiffusion(timesteps=100)
    torch.manual_seed(0)
    net = build_denoiser("tiny", 4, 3, 16).eval()
    masks = (torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    full = diffusion.sample_loop(net, (3, 3, 16, 16), mask=masks, sampler="ddpm", steps=4,
                                 generator=PairStreams.for_pairs(1, [0, 1, 2], 1))
    one = diffusion.sample_loop(net, (1, 3, 16, 16), mask=masks[2:], sampler="ddpm", steps=4,
                                generator=PairStreams.for_pairs(1, [2], 1))
    torch.testing.assert_close(one[0], full[2], rtol=0, atol=1e-4)  # float32 convolutions differ by batch


def test_inference_net_is_the_net_itself_at_fp32():
    net = build_denoiser("tiny", 4, 3, 16)
    assert inference_net(net, torch.device("cpu"), "fp32") is net and not net.training


def test_cast_net_runs_bf16_weights_on_float32_inputs_and_passes_gradients():
    """The CUDA wrapper's behaviour, exercised on the CPU with a bf16 copy built by hand."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", 4, 3, 16).eval()
    cast = CastNet(build_denoiser("tiny", 4, 3, 16).eval(), torch.bfloat16)
    cast.net.load_state_dict(net.state_dict())
    cast.net.to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    t = torch.tensor([10, 500])
    out = cast(x, t)
    assert out.dtype == torch.float32 and next(cast.net.parameters()).dtype == torch.bfloat16
    ref = net(x, t)
    ref = ref.detach()
    assert float((out.detach() - ref).abs().mean()) < 0.05 * float(ref.abs().mean()) + 1e-3  # bf16 rounding only
    (g,) = torch.autograd.grad(out.square().sum(), x)  # Diff-PGD --grad full: float32 gradient at the input
    assert g.dtype == torch.float32 and torch.isfinite(g).all() and float(g.abs().sum()) > 0


def _arrays(n: int, size: int = 8):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            (rng.random((n, size, size)) > 0.5).astype(np.uint8) * 255)


def test_writer_append_batch_writes_in_the_background_and_finalize_waits(tmp_path):
    writer = DatasetWriter(tmp_path / "d", {"command": "test"}, 8, max_pending=1)
    images, masks = _arrays(6)
    for start in (0, 3):
        ids = [f"p{i}" for i in range(start, start + 3)]
        writer.append_batch(ids, images[start:start + 3], masks[start:start + 3],
                            [{"split": "train", "source": "generated"}] * 3)
    info = writer.finalize()
    assert info["count"] == 6 and info["complete"]
    ds = read_dataset(tmp_path / "d", require_complete=True)
    assert sorted(r["id"] for r in ds.rows) == [f"p{i}" for i in range(6)]
    for row in ds.rows:  # every row's files hold exactly the arrays that were given (decoded: RGB, one channel)
        i = int(row["id"][1:])
        image = cv2.imread(str(tmp_path / "d" / row["image"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "d" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (8, 8, 3) and np.array_equal(image[..., ::-1], images[i])
        assert mask.shape == (8, 8) and np.array_equal(mask, masks[i])
        assert row["split"] == "train" and row["source"] == "generated"
    # and through the package's own reader: uint8 images (B, 3, S, S), masks (B, 1, S, S) in {0, 1}
    loaded_images, loaded_masks = load_pairs(ds, sorted(ds.rows, key=lambda r: r["id"]))
    assert torch.equal(loaded_images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(loaded_masks[:, 0] * 255, torch.from_numpy(masks))
    assert not list((tmp_path / "d").rglob(".*tmp*"))


def test_writer_flushes_only_what_it_wrote(tmp_path, monkeypatch):
    """Issue 23.7: a batch is made durable by an fsync of each file it wrote and of the folders their
    names were renamed into, before its rows; nothing filesystem-wide (the old writer called syncfs,
    which waits for every other writer of a shared node, and fsynced no file)."""
    import os

    synced: list[tuple[str, int]] = []  # (the fsynced file or folder, manifest rows on disk then)
    real_fsync = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        manifest = tmp_path / "d" / "manifest.jsonl"
        rows = len(manifest.read_text().splitlines()) if manifest.exists() else 0
        synced.append((path, rows))
        return real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name an fd's file")
    writer = DatasetWriter(tmp_path / "d", {"command": "test"}, 8)
    monkeypatch.setattr(os, "fsync", fsync)
    images, masks = _arrays(3)
    writer.append_batch(["a", "b", "c"], images, masks, [{"split": "train", "source": "generated"}] * 3)
    writer.flush()
    root = (tmp_path / "d").resolve()  # as /proc names it
    written = {str(root / f"{kind}/{i}.png") for kind in ("images", "masks") for i in "abc"}
    before_rows = {path for path, rows in synced if rows == 0}  # synced while the manifest had no row yet
    assert written | {str(root / "images"), str(root / "masks")} == before_rows
    assert synced[-1] == (str(root / "manifest.jsonl"), 3)  # then the rows, in one write and one fsync
    assert len(synced) == len(written) + 2 + 1  # nothing else
    writer.close()


def test_writer_background_error_reaches_the_caller_and_writes_no_row(tmp_path, monkeypatch):
    import augforge.data.dataset as dataset

    writer = DatasetWriter(tmp_path / "d", {"command": "test"}, 8)
    images, masks = _arrays(2)

    def broken(array):
        raise OSError("disk full")

    monkeypatch.setattr(dataset, "encode_png", broken)
    writer.append_batch(["a", "b"], images, masks, [{"split": "train", "source": "generated"}] * 2)
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert read_manifest(tmp_path / "d" / "manifest.jsonl") == []
    with pytest.raises(ValueError, match="expected 8px"):  # shapes are checked in the caller's thread
        writer.append_batch(["c"], images[:1, :4], masks[:1], [{}])
    writer.close()
    json.dumps(writer.made_by)
