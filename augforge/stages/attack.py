"""``augforge attack DATA --segmenter S --method M --out DIR``: an attacked copy of a dataset.

Every pair (or ``--split``) is attacked against the segmenter; rows keep their parent's id and
split, with ``source: attacked``, ``parent`` and ``method`` (name and parameters) plus the
perturbation's L∞/L2 and the segmenter's Dice before/after (K classes: the mean foreground Dice).
Resumable and shardable like ``sample``. The dataset's classes and image channels are read from it and
must be the segmenter's (and the Diff-PGD purifier's); the attacked dataset keeps them.
Budgets are given in 0-255 units and converted here, once, with :func:`intensity_to_unit`.
A pair's random numbers (random start, SDEdit noise) come from counter-based per-pair streams
(:class:`augforge.rng.PairStreams`); the Diff-PGD purifier runs as a bf16 copy on CUDA
(:func:`augforge.models.inference.inference_net`); per-pair numbers reach the host once per batch and
the PNGs are written by the writer's background thread.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from augforge.attacks import ATTACKS, BETA_SEARCH, asma_beta_search, uncertainty_weights
from augforge.configs import ITERATIVE_ATTACKS, AttackConfig, applies, identity
from augforge.data.dataset import (
    MANIFEST,
    DatasetWriter,
    encode_png,
    load_pairs,
    mask_file_values,
    read_dataset,
    read_label_mask,
    read_manifest,
    run_record,
)
from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.diffusion.process import build_diffusion
from augforge.errors import AugforgeError
from augforge.guidance import parse_guidance, resolve_guidance
from augforge.models.folder import check_model_data, load_network, model_fingerprint
from augforge.models.inference import attacked_net, inference_net
from augforge.progress import log, progress_bar
from augforge.ranges import intensity_to_unit, to_uint8_images
from augforge.rng import PairStreams
from augforge.runtime import (
    atomic_write_bytes,
    barrier,
    generator_for,
    init_distributed,
    rank_zero_first,
    resolve_device,
    resolve_precision,
    seed_everything,
    work_shard,
)
from augforge.seg.metrics import consistency_scores, per_image_scores
from augforge.visual import colour_labels, contact_sheet, gray_to_rgb, heatmap

WEIGHTABLE = ("fgsm", "inverse-fgsm", "pgd", "diff-pgd")
# keys of the per-pair generators (evaluate --attack shares them)
RANDOM_START_STREAM, ASMA_TARGET_STREAM, SDEDIT_STREAM, NOISE_STREAM = 13, 7, 11, 17


class Purifier(NamedTuple):
    """The diff-pgd purifier: SDEdit with a mask-conditioned image model (bf16 copy on CUDA), at a guidance scale.

    Called with C-channel images in [0, 1] and the pairs' index masks (B, 1, H, W) (binary {0, 1}; K > 2:
    class indices, which the image model's condition encodes as it was trained)."""

    net: torch.nn.Module
    diffusion: GaussianDiffusion
    guidance: float

    def __call__(self, images01: torch.Tensor, *, mask01: torch.Tensor, generator, sdedit_steps: int,
                 grid_steps: int, full_grad: bool = False) -> torch.Tensor:
        return self.diffusion.sdedit(self.net, images01, mask01=mask01, sdedit_steps=sdedit_steps,
                                     grid_steps=grid_steps, generator=generator, guidance=self.guidance,
                                     differentiable=full_grad, checkpoint=full_grad)


def load_purifier(image_model: str, guidance: str, image_size: int, device: torch.device, precision: str, *,
                  data: str = "", classes: tuple[str, ...] | None = None, channels: int | None = None) -> Purifier:
    """The purifier of `attack` and `evaluate --attack diff-pgd`: the image model (kind and size checked),
    frozen; ``guidance`` as --purify-guidance takes it (checked against how the model was trained). Given the
    data's ``classes`` and ``channels`` (``data`` names it), a model of other classes or channels is refused in
    one line (:func:`augforge.models.folder.check_model_data`)."""
    net, image_cfg = load_network(Path(image_model), kind="image-diffusion", image_size=image_size, device=device)
    if classes is not None and channels is not None:
        check_model_data(image_model, image_cfg, data, classes, channels)
    net.requires_grad_(False)
    # bf16 weights at --precision bf16 (input cast inside; with --grad full the gradient reaches the float32 image)
    return Purifier(inference_net(net, device, precision), build_diffusion("image-diffusion", image_cfg["process"]),
                    resolve_guidance(guidance, image_cfg, image_model, "--purify-guidance"))


def default_eps(cfg: AttackConfig) -> float:
    """0-255 units: fgsm/inverse-fgsm 8 (Pervin et al. used 0.1 ≈ 25/255; 8/255 is the common budget) and
    the noise control at FGSM's budget, pgd/diff-pgd K·γ (DASP: 10 steps of 1), asma unbounded (its own
    stopping rule)."""
    if cfg.eps >= 0:
        return cfg.eps
    if cfg.method in ITERATIVE_ATTACKS:
        return cfg.steps * cfg.step_size
    return 8.0


def asma_betas(cfg: AttackConfig) -> tuple[float, ...]:
    """--beta as candidates: one value, a comma list, or "search" (Ozbulak et al.: 1e-6, 5e-6, 1e-5)."""
    text = str(cfg.beta).strip()
    if text == "search":
        return BETA_SEARCH
    try:
        betas = tuple(float(b) for b in text.split(","))
    except ValueError:
        raise AugforgeError(f"--beta must be a number, a comma list of numbers or 'search', got {cfg.beta!r}") from None
    if any(not b >= 0 for b in betas):
        raise AugforgeError(f"--beta values must be >= 0, got {cfg.beta!r}")
    return betas


def _check(cfg: AttackConfig) -> None:
    if cfg.method not in ATTACKS:
        raise AugforgeError(f"--method must be one of {', '.join(ATTACKS)}, got {cfg.method!r}")
    if cfg.weighted and cfg.method not in WEIGHTABLE:
        raise AugforgeError(f"--weighted applies to {', '.join(WEIGHTABLE)}, not {cfg.method}")
    if cfg.method == "diff-pgd" and not cfg.image_model:
        raise AugforgeError("--method diff-pgd needs --image-model (the image-diffusion purifier)")
    parse_guidance(cfg.purify_guidance, "--purify-guidance")
    if cfg.grad not in ("bpda", "full"):
        raise AugforgeError(f"--grad must be bpda or full, got {cfg.grad!r}")
    if cfg.weight_mode not in ("loss", "step"):
        raise AugforgeError(f"--weight-mode must be loss or step, got {cfg.weight_mode!r}")
    if cfg.target not in ("random-other", "shift", "file"):
        raise AugforgeError(f"--target must be random-other, shift or file, got {cfg.target!r}")
    if cfg.target == "file" and not cfg.target_file:
        raise AugforgeError("--target file needs --target-file MASK.png")
    if cfg.method == "asma" and cfg.target_file and cfg.target != "file":
        raise AugforgeError(f"--target-file is the target of --target file, not of --target {cfg.target}")
    if cfg.random_start and cfg.method not in ITERATIVE_ATTACKS:
        raise AugforgeError(f"--random-start applies to {' and '.join(ITERATIVE_ATTACKS)}, not {cfg.method}")
    asma_betas(cfg)
    if cfg.asma_mask not in ("adaptive", "static"):
        raise AugforgeError(f"--asma-mask must be adaptive or static, got {cfg.asma_mask!r}")
    if cfg.multiplier not in ("dynamic", "constant"):
        raise AugforgeError(f"--multiplier must be dynamic or constant, got {cfg.multiplier!r}")
    if cfg.sigma2 <= 0 or cfg.step_size < 0 or cfg.tau < 0 or cfg.max_iter < 1 or cfg.patience < 0:
        raise AugforgeError("--sigma2 must be > 0, --step-size/--beta/--tau/--patience >= 0 and --max-iter >= 1")
    if not 1 <= cfg.sdedit_steps < cfg.grid_steps:
        raise AugforgeError(f"--sdedit-steps must be in [1, --grid-steps - 1 = {cfg.grid_steps - 1}], "
                            f"got {cfg.sdedit_steps}")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise AugforgeError("--steps and --batch-size must be at least 1")


def unused_options(cfg: AttackConfig) -> list[str]:
    """The options set away from their default that do nothing for this method (``when`` on the
    config field): they are no part of the run (a change continues it) and a note says so."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return ["--" + f.name.replace("_", "-") for f in fields(cfg)
            if not applies(f, values) and f.default is not MISSING and values[f.name] != f.default]


def read_target_file(path: str, size: int, num_classes: int = 2) -> np.ndarray:
    """--target-file as a class-index map (S, S) uint8: a binary mask file (0/255, read as every mask is) for
    binary data, a K-class label PNG (values 0..K-1, each checked: one line naming the file) for K > 2;
    resized to the data's size with nearest-neighbour (classes stay classes)."""
    return cv2.resize(read_label_mask(Path(path), num_classes), (size, size), interpolation=cv2.INTER_NEAREST)


def asma_targets(cfg: AttackConfig, masks: torch.Tensor, all_masks: torch.Tensor, index: list[int], *,
                 file_target: np.ndarray | None = None) -> torch.Tensor:
    """ASMA target index masks (B,1,S,S): another pair's mask (seeded per pair), the mask shifted, or a file
    (``file_target``, :func:`read_target_file`; read as a binary mask when not given)."""
    size = masks.shape[-1]
    if cfg.target == "shift":
        return torch.roll(masks, shifts=(size // 4, size // 4), dims=(-2, -1))
    if cfg.target == "file":
        m = read_target_file(cfg.target_file, size) if file_target is None else file_target
        return torch.from_numpy(m).float().to(masks.device).expand_as(masks).clone()
    n = all_masks.shape[0]
    others = [(i + 1 + int(torch.randint(0, n - 1, (1,), generator=generator_for(cfg.seed, i, ASMA_TARGET_STREAM)))) % n
              if n > 1 else i for i in index]
    return all_masks[others].to(masks.device).float()


def run(cfg: AttackConfig) -> dict:
    _check(cfg)
    unused = unused_options(cfg)
    if unused:
        log(f"note: {', '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing for --method {cfg.method} "
            "(not part of this run)")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    world = init_distributed(device)
    seed_everything(cfg.seed)
    shard_index, shard_count = work_shard(cfg.shard)
    eps255 = default_eps(cfg)
    eps, step_size = intensity_to_unit(eps255), intensity_to_unit(cfg.step_size)

    # 1. data and models (kind and image size checked)
    ds = read_dataset(Path(cfg.data))
    rows = sorted(ds.split(cfg.split), key=lambda r: r["id"])
    if not rows:
        raise AugforgeError(f"{cfg.data}: no pairs in split {cfg.split!r}")
    seg, seg_cfg = load_network(Path(cfg.segmenter), kind="segmenter", image_size=ds.image_size, device=device)
    # the data's classes and image channels are the segmenter's (one line otherwise, before anything is written)
    check_model_data(cfg.segmenter, seg_cfg, cfg.data, ds.classes, ds.channels)
    seg.requires_grad_(False)
    seg = attacked_net(seg, precision)  # under bf16 autocast at --precision bf16
    purifier = (load_purifier(cfg.image_model, cfg.purify_guidance, ds.image_size, device, precision,
                              data=cfg.data, classes=ds.classes, channels=ds.channels)
                if cfg.method == "diff-pgd" else None)
    file_target = (read_target_file(cfg.target_file, ds.image_size, ds.num_classes)
                   if cfg.method == "asma" and cfg.target == "file" else None)

    # 2. output: the run's identity holds only the options this method uses (configs: when=)
    options = identity(cfg)
    if "eps" in options:
        options["eps"] = eps255
    # the inputs by content: other pairs or a retrained model under the same path make another run
    options["precision"] = precision  # the arithmetic used: auto and its value are one run
    options["data_fingerprint"] = ds.fingerprint()
    options["segmenter_fingerprint"] = model_fingerprint(Path(cfg.segmenter))
    if cfg.method == "diff-pgd":
        options["image_model_fingerprint"] = model_fingerprint(Path(cfg.image_model))
        options["purify_guidance"] = f"{purifier.guidance:g}"  # the scale used: auto and its value are one run
    made_by = run_record("attack", options)
    writer = rank_zero_first(lambda: DatasetWriter(Path(cfg.out), made_by, ds.image_size,
                                                   overwrite=cfg.overwrite and world.is_main,
                                                   classes=ds.classes, channels=ds.channels))
    done = writer.existing_ids()
    ids = [f"{r['id']}-{cfg.method}" for r in rows]
    todo = [i for i in range(shard_index, len(rows), shard_count) if ids[i] not in done]
    all_masks = load_pairs(ds, rows)[1] if cfg.method == "asma" and cfg.target == "random-other" else None
    method = {"name": cfg.method, "eps": eps255, "loss": cfg.attack_loss}
    if cfg.method in ("pgd", "diff-pgd"):
        method.update(step_size=cfg.step_size, steps=cfg.steps, random_start=cfg.random_start)
    if cfg.weighted:
        method.update(weighted=True, sigma2=cfg.sigma2, weight_mode=cfg.weight_mode)
    if cfg.method == "diff-pgd":
        method.update(sdedit_steps=cfg.sdedit_steps, grid_steps=cfg.grid_steps, grad=cfg.grad,
                      purify_guidance=purifier.guidance)
    if cfg.method == "asma":
        betas = asma_betas(cfg)
        method = {"name": "asma", "target": cfg.target, "max_iter": cfg.max_iter,
                  "beta": betas[0] if len(betas) == 1 else list(betas), "tau": cfg.tau,
                  "mask": cfg.asma_mask, "multiplier": cfg.multiplier,
                  **({"patience": cfg.patience} if cfg.patience else {})}

    # 3. attack batch by batch
    with progress_bar(f"attack {cfg.method}", total=len(todo)) as advance:
        for start in range(0, len(todo), cfg.batch_size):
            index = todo[start:start + cfg.batch_size]
            images, masks = load_pairs(ds, [rows[i] for i in index])
            x, y = images.to(device).float() / 255.0, masks.to(device).float()
            # the random start and the noise signs from per-pair streams: a pair's result does not depend on its
            # batch, --shard or rank
            stream = NOISE_STREAM if cfg.method == "noise" else RANDOM_START_STREAM if cfg.random_start else None
            generator = PairStreams.for_pairs(cfg.seed, index, stream, device) if stream is not None else None
            with torch.no_grad():
                clean_logits = seg(x)
            weights = uncertainty_weights(clean_logits, cfg.sigma2) if cfg.weighted else None
            kwargs: dict = {}
            if cfg.method == "asma":
                target = asma_targets(cfg, y, all_masks, index, file_target=file_target)
                result, chosen = asma_beta_search(seg, x, y, target=target, betas=betas, max_iter=cfg.max_iter,
                                                  patience=cfg.patience, tau=cfg.tau, generator=generator,
                                                  adaptive_mask=cfg.asma_mask == "adaptive",
                                                  dynamic_multiplier=cfg.multiplier == "dynamic")
                x_adv = result.x_adv
                # Ozbulak et al.'s Table 1 columns: L2 and L-inf in [0, 1] units, IoU / pixel accuracy with the target
                extra = {"iou_target": result.iou_target.tolist(), "pixel_acc_target": result.pixel_acc_target.tolist(),
                         "iterations": result.iterations.tolist(), "l2_01": result.l2.tolist(),
                         "linf_01": result.linf.tolist(), "beta": chosen.tolist()}
            else:
                kwargs = dict(eps=eps, loss=cfg.attack_loss, generator=generator)
                if cfg.weighted:
                    kwargs.update(weights=weights, weight_mode=cfg.weight_mode)
                if cfg.method in ("pgd", "diff-pgd"):
                    kwargs.update(step_size=step_size, steps=cfg.steps, random_start=cfg.random_start)
                if cfg.method == "diff-pgd":
                    pair_gens = PairStreams.for_pairs(cfg.seed, index, SDEDIT_STREAM, device)

                    def purify(images01: torch.Tensor, _y=y, _gens=pair_gens) -> torch.Tensor:
                        return purifier(images01, mask01=_y, generator=_gens, sdedit_steps=cfg.sdedit_steps,
                                        grid_steps=cfg.grid_steps, full_grad=cfg.grad == "full")

                    kwargs.update(purify=purify, grad=cfg.grad)
                x_adv = ATTACKS[cfg.method](seg, x, y, **kwargs)
                extra = {}
            with torch.no_grad():
                adv_logits = seg(x_adv)
            # per-pair numbers computed batched, moved to the host in one transfer
            delta = (x_adv - x).flatten(1)
            stats = torch.stack([delta.abs().amax(1) * 255, delta.norm(dim=1) * 255,
                                 _dice(clean_logits, y).to(delta.dtype), _dice(adv_logits, y).to(delta.dtype)], 1)
            linf, l2, dice_before, dice_after = zip(*stats.cpu().tolist()) if index else ((),) * 4
            adv_u8 = to_uint8_images(x_adv)
            masks_u8 = mask_file_values(masks[:, 0].numpy(), ds.num_classes)
            out_rows = [{"split": rows[i]["split"], "source": "attacked", "parent": rows[i]["id"], "method": method,
                         "seed": cfg.seed, "linf": linf[k], "l2": l2[k], "dice_before": dice_before[k],
                         "dice_after": dice_after[k], **{key: v[k] for key, v in extra.items()}}
                        for k, i in enumerate(index)]
            writer.append_batch([ids[i] for i in index], adv_u8, masks_u8, out_rows)
            if start == 0 and world.is_main:
                _sheet(writer.root, images, x_adv, masks, clean_logits, adv_logits, weights, ds.classes)
            advance(len(index))
    writer.flush()
    barrier()

    # 4. summary over all attacked pairs written so far
    written = read_manifest(writer.root / MANIFEST)
    result = {"out": str(writer.root), "method": cfg.method, "eps_255": eps255, "precision": precision,
              "written_now": len(todo), "count": len(written)}
    if written:
        for key in ("dice_before", "dice_after", "linf", "l2"):
            result[f"mean_{key}"] = float(np.mean([r[key] for r in written]))
        if cfg.method == "asma":
            result["mean_iou_target"] = float(np.mean([r["iou_target"] for r in written]))
            for key in ("l2_01", "linf_01"):  # [0, 1] units, as Ozbulak et al.'s Table 1
                values = [r[key] for r in written if key in r]
                if values:
                    result[f"mean_{key}"] = float(np.mean(values))
            result["success_iou_0.9"] = float(np.mean([r["iou_target"] > 0.9 for r in written]))
    if world.is_main and len(written) >= len(rows):
        writer.finalize()
        result["contact_sheet"] = str(writer.root / "contact_sheet.png")
    return result


def _dice(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image Dice (B,) of the segmenter's prediction: binary as it always was (logit > 0); K logits: the mean
    foreground Dice of the argmax (:func:`augforge.seg.metrics.consistency_scores`)."""
    if logits.shape[1] == 1:
        return per_image_scores((logits > 0).float(), y)["dice"]
    return consistency_scores(logits, y)["dice"]


def _sheet(root: Path, images_u8, x_adv, masks, clean_logits, adv_logits, weights,
           classes: tuple[str, ...] = ("background", "foreground"), limit: int = 8) -> None:
    """clean | attacked | amplified |difference| | W map (weighted) | prediction before | after (grey images grey,
    K-class predictions one colour per class with a legend)."""
    n = min(limit, images_u8.shape[0])
    clean = images_u8[:n].permute(0, 2, 3, 1).numpy()
    adv = to_uint8_images(x_adv[:n])
    diff = np.abs(adv.astype(np.int16) - clean.astype(np.int16))
    gain = 255.0 / max(1, int(diff.max()))
    amplified = np.clip(diff * gain, 0, 255).astype(np.uint8)
    if clean_logits.shape[1] == 1:
        before = [gray_to_rgb(m) for m in ((clean_logits[:n, 0] > 0).cpu().numpy() * 255).astype(np.uint8)]
        after = [gray_to_rgb(m) for m in ((adv_logits[:n, 0] > 0).cpu().numpy() * 255).astype(np.uint8)]
    else:
        before, after = ([colour_labels(m, len(classes)) for m in logits[:n].argmax(1).cpu().numpy()]
                         for logits in (clean_logits, adv_logits))
    cells = []
    for i in range(n):
        row = [clean[i], adv[i], amplified[i]]
        if weights is not None:
            row.append(heatmap(weights[i, 0].cpu().numpy()))
        row += [before[i], after[i]]
        cells.append(row)
    titles = ["clean", "attacked", f"|difference| x{gain:.0f}"] + (["uncertainty W"] if weights is not None else []) \
        + ["prediction before", "prediction after"]
    atomic_write_bytes(root / "contact_sheet.png",
                       encode_png(contact_sheet(cells, titles=titles, classes=tuple(classes))))
