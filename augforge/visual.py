"""Pictures a person looks at: mask overlays and contact sheets (uint8 numpy in, uint8 numpy out)."""

from __future__ import annotations

import cv2
import numpy as np


def overlay(image: np.ndarray, mask: np.ndarray, color=(0, 255, 0), alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 (H,W,3) with the mask (H,W, nonzero = polyp) tinted and its contour drawn."""
    out = image.copy()
    m = mask > 0
    out[m] = (out[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def gray_to_rgb(x: np.ndarray) -> np.ndarray:
    """(H,W) uint8 -> (H,W,3)."""
    return np.repeat(x[..., None], 3, axis=2)


def heatmap(values01: np.ndarray) -> np.ndarray:
    """(H,W) floats in [0,1] -> RGB uint8 colour map (for uncertainty maps)."""
    colored = cv2.applyColorMap((np.clip(values01, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2, min_cell: int = 96) -> np.ndarray:
    """A grid: one row per pair, one cell per view (each RGB uint8 (H,W,3), same size).

    Small cells are upscaled (nearest) to at least ``min_cell`` pixels so 32-px results stay visible.
    """
    h, w = rows[0][0].shape[:2]
    scale = max(1, -(-min_cell // h))
    ch, cw = h * scale, w * scale
    n_cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (ch + pad) + pad, n_cols * (cw + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            cell = cv2.resize(cell, (cw, ch), interpolation=cv2.INTER_NEAREST) if scale > 1 else cell
            y, x = pad + i * (ch + pad), pad + j * (cw + pad)
            sheet[y:y + ch, x:x + cw] = cell
    return sheet
