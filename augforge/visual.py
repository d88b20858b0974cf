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


TITLE_BAND = 26  # height (px) of the white header band holding the column titles


def _title_cell(text: str, width: int) -> np.ndarray:
    """A white (TITLE_BAND, width, 3) band with ``text`` centred in black, shrunk to fit the width."""
    band = np.full((TITLE_BAND, width, 3), 255, np.uint8)
    font, thickness, scale = cv2.FONT_HERSHEY_SIMPLEX, 1, 0.5
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    if tw > width - 6:
        scale *= (width - 6) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    cv2.putText(band, text, (max(0, (width - tw) // 2), (TITLE_BAND + th) // 2), font, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)
    return band


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2, min_cell: int = 128,
                  titles: list[str] | None = None) -> np.ndarray:
    """A grid: one row per pair, one cell per view (each RGB uint8 (H,W,3), same size).

    Small cells are upscaled by an integer factor (nearest: pixels stay honest) to at least ``min_cell``
    pixels, so a 32-px polyp is visible. ``titles`` (one per column) go in a white band on top.
    """
    h, w = rows[0][0].shape[:2]
    scale = max(1, -(-min_cell // min(h, w)))
    ch, cw = h * scale, w * scale
    n_cols = max(len(r) for r in rows)
    top = TITLE_BAND + pad if titles else 0
    sheet = np.full((top + len(rows) * (ch + pad) + pad, n_cols * (cw + pad) + pad, 3), 255, np.uint8)
    for j, text in enumerate((titles or [])[:n_cols]):
        x = pad + j * (cw + pad)
        sheet[pad:pad + TITLE_BAND, x:x + cw] = _title_cell(text, cw)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            cell = cv2.resize(cell, (cw, ch), interpolation=cv2.INTER_NEAREST) if scale > 1 else cell
            y, x = top + pad + i * (ch + pad), pad + j * (cw + pad)
            sheet[y:y + ch, x:x + cw] = cell
    return sheet
