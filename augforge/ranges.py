"""Pixel-range conventions, in one place (docs/index.md, "Pixel ranges").

- on disk: uint8 in [0, 255]
- in memory: float images in [0, 1], shape (B, 3, H, W); masks float in {0, 1}, shape (B, 1, H, W)
- diffusion models see [-1, 1]
- attack budgets (``--eps``, ``--step-size``) are given in 0-255 intensity units and
  converted by :func:`intensity_to_unit`, nowhere else.
"""

from __future__ import annotations


def intensity_to_unit(value_255: float) -> float:
    """Convert an intensity budget in 0-255 units to [0, 1] image units."""
    return float(value_255) / 255.0


def to_model_range(x01):
    """[0, 1] -> [-1, 1] (images and masks as the diffusion models see them)."""
    return x01 * 2.0 - 1.0


def from_model_range(x):
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8_images(x01):
    """Images (B, 3, H, W) in [0, 1] (a tensor) -> (B, H, W, 3) uint8 numpy array, as written to disk."""
    return (x01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
