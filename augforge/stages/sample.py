"""``augforge sample``: masks from the mask model, then images from the mask-conditioned image model.

The classes K and image channels C come from the model folders (config.json's "classes"/"channels"): the
mask model's process is Bernoulli for binary masks, categorical for K > 2 (:func:`build_diffusion`), and
the image model draws C channels. A mask model and an image model of other classes or channels, or
``--masks-from`` data of other classes or channels than the image model's, are refused in one line before
anything is written. The generated dataset records the classes and channels (:class:`DatasetWriter`).

Pair i is drawn from its own counter-based random streams (keyed by ``(seed, i, stream)``,
:class:`augforge.rng.PairStreams`), and every batch is padded to ``--batch-size`` (:func:`padded`),
so at a given batch size the networks always see the same shapes and a pair's floats are bit-identical
whatever shard, torchrun rank or rerun it lands in; another batch size changes them only up to
floating-point rounding. At ``--precision bf16`` (auto's choice on CUDA and on CPUs with native bf16) both UNets
run as bf16 copies (:func:`augforge.models.inference.inference_net`);
PNG encoding and disk writes happen in the writer's background thread while the next batch runs.
Rerunning the same command writes only the pairs that are missing (kill -9 included) and ends with
exactly N.

``--guidance auto`` (the default) samples with the guidance the image model was trained for
(:func:`resolve_guidance`); the scale used is what the dataset records.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from augforge.configs import SampleConfig, identity
from augforge.data.dataset import (
    MANIFEST,
    DatasetWriter,
    encode_png,
    load_pairs,
    mask_file_values,
    read_dataset,
    read_manifest,
    run_record,
)
from augforge.diffusion.gaussian import SAMPLERS
from augforge.diffusion.process import build_diffusion
from augforge.errors import AugforgeError
from augforge.guidance import parse_guidance, resolve_guidance
from augforge.models.folder import check_model_data, load_network, model_channels, model_classes, model_fingerprint
from augforge.models.inference import inference_net
from augforge.progress import log, progress_bar
from augforge.ranges import from_model_range, to_uint8_images
from augforge.rng import PairStreams
from augforge.runtime import (
    SAMPLE_BREAK_EVEN_BATCHES,
    atomic_write_bytes,
    barrier,
    check_compile_mode,
    compile_decision,
    init_distributed,
    rank_zero_first,
    resolve_device,
    resolve_precision,
    seed_everything,
    work_shard,
)
from augforge.visual import contact_sheet, overlay

MASK_STREAM, IMAGE_STREAM = 0, 1  # the two per-pair random streams


def pair_streams(seed: int, indices: list[int], stream: int, device: torch.device) -> PairStreams:
    """The random streams of pairs ``indices``: pair i's numbers depend only on (seed, i, stream)."""
    return PairStreams.for_pairs(seed, indices, stream, device)


@torch.no_grad()
def sample_masks(mask_net, process: dict, indices: list[int], *, size: int, steps: int, seed: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the masks of pairs ``indices`` (one batch): (masks, probability maps) float32. Binary (Bernoulli):
    masks {0,1} and P(y_0 = 1), both (B,1,S,S); K-class (categorical): class indices (B,1,S,S) and the
    x_0 estimate (B,K,S,S).

    ``mask_net`` runs as given (no autocast): pass :func:`inference_net`'s network (bf16 on CUDA).
    """
    diffusion = build_diffusion("mask-diffusion", process)
    return diffusion.sample_loop(mask_net, (len(indices), 1, size, size), steps=steps,
                                 generator=pair_streams(seed, indices, MASK_STREAM, device), device=device)


@torch.no_grad()
def render_images(image_net, process: dict, masks: torch.Tensor, indices: list[int], *, sampler: str, steps: int,
                  guidance: float, seed: int, channels: int = 3) -> torch.Tensor:
    """Images in [0,1] (B,C,S,S) float32, C = ``channels``, for masks (B,1,S,S) (class indices; binary {0,1}).

    ``image_net`` runs as given (no autocast): pass :func:`inference_net`'s network (bf16 on CUDA).
    """
    diffusion = build_diffusion("image-diffusion", process)
    x0 = diffusion.sample_loop(image_net, (masks.shape[0], channels, *masks.shape[-2:]), mask=masks.float(),
                               sampler=sampler, steps=steps, guidance=guidance,
                               generator=pair_streams(seed, indices, IMAGE_STREAM, masks.device))
    return from_model_range(x0.float())


def padded(idx: list[int], batch_size: int) -> list[int]:
    """``idx`` (1 to ``batch_size`` pair indices) padded to ``batch_size`` with copies of its last pair.

    Every batch then has the same shape (before classifier-free guidance doubles it to 2 x batch_size),
    so a pair's floats do not depend on which other pairs share its batch; the copies draw the same
    numbers as that pair (its own streams) and are dropped after."""
    if not 1 <= len(idx) <= batch_size:
        raise ValueError(f"a batch holds 1 to {batch_size} pairs, got {len(idx)}")
    return idx + [idx[-1]] * (batch_size - len(idx))


@torch.no_grad()
def draw_batch(idx: list[int], *, batch_size: int, image_net, image_process: dict, mask_net=None,
               mask_process: dict | None = None, real_masks: torch.Tensor | None = None, size: int, sampler: str,
               sample_steps: int, mask_sample_steps: int, guidance: float, seed: int,
               device: torch.device, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``idx`` run as one batch padded to ``batch_size`` (:func:`padded`): (images in [0,1]
    (B,C,S,S) float32, masks of class indices (binary {0,1}) (B,1,S,S) float32), B = len(idx).

    Masks come from the mask model, or with ``real_masks`` (M,1,S,S) pair i gets real mask i mod M."""
    run_idx = padded(idx, batch_size)
    if real_masks is not None:
        masks = real_masks[[i % len(real_masks) for i in run_idx]].to(device).float()
    else:
        masks, _ = sample_masks(mask_net, mask_process, run_idx, size=size, steps=mask_sample_steps, seed=seed,
                                device=device)
    images = render_images(image_net, image_process, masks, run_idx, sampler=sampler, steps=sample_steps,
                           guidance=guidance, seed=seed, channels=channels)
    return images[:len(idx)], masks[:len(idx)]


def write_contact_sheet(root: Path, limit: int = 16) -> Path:
    """image | mask overlay for the first ``limit`` pairs of a dataset folder (K > 2: class colours, legend)."""
    ds = read_dataset(root)
    rows = sorted(ds.rows, key=lambda r: r["id"])[:limit]
    images, masks = load_pairs(ds, rows)
    imgs = images.permute(0, 2, 3, 1).numpy()
    cells = [[imgs[i], overlay(imgs[i], masks[i, 0].numpy(), num_classes=ds.num_classes)] for i in range(len(rows))]
    path = root / "contact_sheet.png"
    sheet = contact_sheet(cells, titles=["image", "mask overlay"], classes=ds.classes)
    atomic_write_bytes(path, encode_png(sheet))
    return path


def _check(cfg: SampleConfig) -> None:
    if cfg.n < 1:
        raise AugforgeError(f"--n must be at least 1, got {cfg.n}")
    if cfg.sampler not in SAMPLERS:
        raise AugforgeError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    if not cfg.image_model:
        raise AugforgeError("--image-model is required")
    if not cfg.mask_model and not cfg.masks_from:
        raise AugforgeError("give --mask-model (generate masks) or --masks-from DATA (use real masks)")
    if cfg.batch_size < 1 or cfg.sample_steps < 1 or cfg.mask_sample_steps < 1:
        raise AugforgeError("--batch-size, --sample-steps and --mask-sample-steps must be at least 1")
    parse_guidance(cfg.guidance)
    check_compile_mode(cfg.compile)


def run(cfg: SampleConfig) -> dict:
    _check(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    world = init_distributed(device)
    seed_everything(cfg.seed)
    shard_index, shard_count = work_shard(cfg.shard)

    # 1. models (kind and image size checked from their config.json)
    image_net, image_cfg = load_network(Path(cfg.image_model), kind="image-diffusion", device=device)
    size = image_cfg["image_size"]
    classes, channels = model_classes(image_cfg), model_channels(image_cfg)  # K and C: the image model's
    guidance = resolve_guidance(cfg.guidance, image_cfg, cfg.image_model)
    real_masks, parents, mask_net, mask_cfg = None, None, None, None
    if cfg.masks_from:
        ds = read_dataset(Path(cfg.masks_from))
        if ds.image_size != size:
            raise AugforgeError(f"{cfg.masks_from}: masks are {ds.image_size}px, the image model works on {size}px")
        check_model_data(cfg.image_model, image_cfg, cfg.masks_from, ds.classes, ds.channels)
        rows = ds.split("train")
        _, real_masks = load_pairs(ds, rows)
        parents = [r["id"] for r in rows]
    else:
        mask_net, mask_cfg = load_network(Path(cfg.mask_model), kind="mask-diffusion", image_size=size, device=device)
        check_model_data(cfg.mask_model, mask_cfg, cfg.image_model, classes, channels)

    # bf16 copies at --precision bf16 (the networks themselves at fp32)
    image_net = inference_net(image_net, device, precision)
    mask_net = inference_net(mask_net, device, precision) if mask_net is not None else None

    # 2. output: same run continues, different run refused
    options = identity(cfg)
    # the scale used (auto resolved), as the option's text: "auto" and the value it stands for are one run
    options["guidance"] = str(guidance)
    options["precision"] = precision  # the arithmetic used: auto and its value are one run
    # the models by what they compute (weights and config): a model retrained in its folder is another run
    options["image_model_fingerprint"] = model_fingerprint(Path(cfg.image_model))
    if mask_cfg:
        options["mask_model_fingerprint"] = model_fingerprint(Path(cfg.mask_model))
    made_by = run_record("sample", options)
    writer = rank_zero_first(lambda: DatasetWriter(Path(cfg.out), made_by, size,
                                                   overwrite=cfg.overwrite and world.is_main,
                                                   classes=classes, channels=channels))
    ids = [f"gen{i:06d}" for i in range(cfg.n)]
    done = writer.existing_ids()
    todo = [i for i in range(shard_index, cfg.n, shard_count) if ids[i] not in done]
    # compile when asked, or, with auto, when the batches to draw repay it (said once); the first batch
    # compiles, every batch has its shape (padded): no recompile
    use_compile, compiled, message = compile_decision("sample", cfg.compile, device,
                                                      math.ceil(len(todo) / cfg.batch_size),
                                                      break_even=SAMPLE_BREAK_EVEN_BATCHES, unit="batches")
    if world.is_main and message:
        log(message)
    if use_compile:
        image_net = torch.compile(image_net)
        mask_net = torch.compile(mask_net) if mask_net is not None else None

    # 3. draw and write, batch by batch (the writer's thread encodes and writes while the next batch runs)
    with progress_bar("sample", total=len(todo)) as advance:
        for start in range(0, len(todo), cfg.batch_size):
            idx = todo[start:start + cfg.batch_size]
            images, masks = draw_batch(idx, batch_size=cfg.batch_size, image_net=image_net,
                                       image_process=image_cfg["process"], mask_net=mask_net,
                                       mask_process=mask_cfg["process"] if mask_cfg else None, real_masks=real_masks,
                                       size=size, sampler=cfg.sampler, sample_steps=cfg.sample_steps,
                                       mask_sample_steps=cfg.mask_sample_steps, guidance=guidance, seed=cfg.seed,
                                       device=device, channels=channels)
            images_u8 = to_uint8_images(images)  # (B, S, S, C)
            masks_u8 = mask_file_values(masks[:, 0].to(torch.uint8).cpu().numpy(), len(classes))
            rows = []
            for i in idx:
                row = {"split": "train", "source": "generated", "seed": cfg.seed, "index": i,
                       "method": {"name": "dasp-sample", "sampler": cfg.sampler, "sample_steps": cfg.sample_steps,
                                  "mask_sample_steps": None if real_masks is not None else cfg.mask_sample_steps,
                                  "guidance": guidance, "precision": precision},
                       "image_model": options["image_model_fingerprint"],
                       "mask_model": options.get("mask_model_fingerprint", "real-masks")}
                if parents is not None:
                    row["parent"] = parents[i % len(parents)]
                rows.append(row)
            writer.append_batch([ids[i] for i in idx], images_u8, masks_u8, rows)
            advance(len(idx))
    writer.flush()
    barrier()

    # 4. summary, contact sheet, optional quality report (rank 0)
    written = len(read_manifest(writer.root / MANIFEST))
    result = {"out": str(writer.root), "written_now": len(todo), "count": written, "requested": cfg.n,
              "guidance": guidance, "precision": precision, "compile": compiled}
    if world.is_main and written >= cfg.n:
        info = writer.finalize({"guidance": guidance, "precision": precision, "compile": compiled})
        result["contact_sheet"] = str(write_contact_sheet(writer.root))
        result["count"] = info["count"]
        if cfg.report:
            from augforge.stages.quality_report import sample_report

            result["report"] = sample_report(writer.root, cfg, device)
    return result
