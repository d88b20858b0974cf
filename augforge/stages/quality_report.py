"""Quality of a generated dataset, next to the same figures for held-out real pairs (``sample --report``).

- mask statistics (area distribution distance, components, empty fraction, memorisation IoU);
- mask-image consistency: a real-trained segmenter's mDice between its prediction on each generated
  image and the generated mask (floor: the same with shuffled pairs; ceiling: held-out real pairs);
- realism: Fréchet distance in the feature space of that segmenter's encoder (NOT FID: no
  Inception network, nothing downloaded), at equal N (every set subsampled to the smallest, seeded: the
  distance is biased by N), and beside it KID, the unbiased kernel distance on the same features;
- memorisation: RMSE from each image to its nearest real training image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augforge.configs import SampleConfig
from augforge.data.dataset import load_pairs, read_dataset
from augforge.errors import AugforgeError
from augforge.models.folder import load_network, read_config
from augforge.quality import (
    class_area_report,
    frechet_distance,
    kernel_inception_distance,
    mask_quality_report,
    nearest_distance,
    subsample_to_equal_n,
)
from augforge.seg.metrics import consistency_scores, per_image_scores
from augforge.seg.train import predict

MEMO_SIZE = 32  # images are compared at 32x32 for the nearest-neighbour distance
REALISM_SEED = 0  # the subsets of the equal-N Fréchet distance and of KID


def _real_data_path(cfg: SampleConfig) -> Path:
    if cfg.masks_from:
        return Path(cfg.masks_from)
    made_by = read_config(Path(cfg.image_model), kind="image-diffusion")["made_by"]
    return Path(made_by["options"]["data"])


def _consistency(seg, images_u8: torch.Tensor, masks: torch.Tensor, device) -> float:
    """Mean per-image Dice of the segmenter's prediction against the masks (K classes: the mean over the
    foreground classes of the argmax, :func:`consistency_scores`)."""
    logits = predict(seg, images_u8, 32, device, "fp32")  # a measurement: the same arithmetic whatever the run's
    if logits.shape[1] > 1:
        return float(consistency_scores(logits, masks.to(device))["dice"].mean())
    return float(per_image_scores((logits > 0).float(), masks.to(device).float())["dice"].mean())


@torch.no_grad()
def _features(seg, images_u8: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([seg.features(images_u8[i:i + 32].to(device).float() / 255) for i in range(0, len(images_u8), 32)])


def sample_report(gen_root: Path, cfg: SampleConfig, device: torch.device) -> dict:
    real_path = _real_data_path(cfg)
    if not real_path.is_dir():
        raise AugforgeError(f"{real_path}: the real dataset of the image model is not there; the report compares with it")
    real = read_dataset(real_path)
    gen = read_dataset(gen_root)
    train_images, train_masks = load_pairs(real, real.split("train"))
    held_rows = real.split("val") + real.split("test")
    held_images, held_masks = load_pairs(real, held_rows) if held_rows else load_pairs(real, real.split("train")[:64])
    gen_images, gen_masks = load_pairs(gen)

    report: dict = {"reference": str(real_path), "generated": len(gen.rows), "held_out_real": len(held_images)}
    # K classes: the foreground (every class > 0) as one mask, and each class's area on its own
    report["masks"] = {"generated": mask_quality_report(gen_masks, train_masks),
                       "held_out_real": mask_quality_report(held_masks, train_masks)}
    if real.num_classes > 2:
        report["masks"]["per_class"] = {"generated": class_area_report(gen_masks, train_masks, real.classes),
                                        "held_out_real": class_area_report(held_masks, train_masks, real.classes)}

    small = lambda x: F.interpolate(x.float() / 255, size=(MEMO_SIZE, MEMO_SIZE), mode="area")
    train_small = small(train_images)
    report["nearest_train_rmse"] = {
        name: {"median": float(np.median(d)), "min": float(d.min())}
        for name, d in (("generated", nearest_distance(small(gen_images), train_small)),
                        ("held_out_real", nearest_distance(small(held_images), train_small)))}

    if cfg.segmenter:
        seg, _ = load_network(Path(cfg.segmenter), kind="segmenter", image_size=gen.image_size, device=device)
        report["consistency_mDice"] = {
            "generated": _consistency(seg, gen_images, gen_masks, device),
            "generated_shuffled": _consistency(seg, gen_images, gen_masks.roll(1, 0), device),
            "held_out_real": _consistency(seg, held_images, held_masks, device)}
        report.update(realism(_features(seg, gen_images, device), _features(seg, held_images, device),
                              _features(seg, train_images, device)))
    return report


def realism(gen_feats: torch.Tensor, held_feats: torch.Tensor, train_feats: torch.Tensor) -> dict:
    """Encoder-feature distances of the generated and the held-out real images to the train images.

    ``encoder_frechet``: the Fréchet distance with all three sets subsampled to the same N (the smallest;
    seeded), so the generated and held-out rows are comparable (the distance grows as N shrinks);
    ``encoder_kid``: KID on all the features (unbiased whatever N; mean and std over subsets)."""
    generator = torch.Generator().manual_seed(REALISM_SEED)
    gen_n, held_n, train_n = subsample_to_equal_n(gen_feats, held_feats, train_feats, generator=generator)
    return {"encoder_frechet": {"generated": frechet_distance(gen_n, train_n),
                                "held_out_real": frechet_distance(held_n, train_n), "n": len(gen_n)},
            "encoder_kid": {"generated": kernel_inception_distance(gen_feats, train_feats, generator=generator),
                            "held_out_real": kernel_inception_distance(held_feats, train_feats, generator=generator)},
            "realism_note": f"encoder Fréchet at equal N = {len(gen_n)} (each set subsampled, seed {REALISM_SEED}); "
                            "encoder KID unbiased, on all pairs"}
