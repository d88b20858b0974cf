"""Pixel-range conventions, in one place (docs/index.md, "Pixel ranges").

- on disk: uint8 in [0, 255]
- in memory: float images in [0, 1], shape (B, C, H, W); masks float class indices, shape (B, 1, H, W)
  ({0, 1} when binary), one-hot (B, K, H, W) where a computation needs one channel per class (:func:`one_hot`)
- diffusion models see [-1, 1]
- attack budgets (``--eps``, ``--step-size``) are given in 0-255 intensity units and
  converted by :func:`intensity_to_unit`, nowhere else.
"""

from __future__ import annotations

import torch


def intensity_to_unit(value_255: float) -> float:
    """Convert an intensity budget in 0-255 units to [0, 1] image units."""
    return float(value_255) / 255.0


def to_model_range(x01):
    """[0, 1] -> [-1, 1] (images and masks as the diffusion models see them)."""
    return x01 * 2.0 - 1.0


def from_model_range(x):
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class-index masks (B, 1, ...) (float or integer, values 0..K-1) -> one-hot (B, K, ...) of ``dtype``
    (default: y's dtype if floating, else float32). One comparison, no host sync and no range check (a value
    outside 0..K-1 gives an all-zero pixel)."""
    if y.dim() < 3 or y.shape[1] != 1:
        raise ValueError(f"class-index masks must have shape (B, 1, ...), got {tuple(y.shape)}")
    classes = torch.arange(num_classes, device=y.device).view(1, -1, *([1] * (y.dim() - 2)))
    if dtype is None:
        dtype = y.dtype if y.is_floating_point() else torch.float32
    return (y.long() == classes).to(dtype)


def to_uint8_images(x01):
    """Images (B, 3, H, W) in [0, 1] (a tensor) -> (B, H, W, 3) uint8 numpy array, as written to disk."""
    return (x01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
