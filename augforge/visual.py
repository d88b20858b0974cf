"""Pictures a person looks at: mask overlays and contact sheets (uint8 numpy in, uint8 numpy out).

Grey images (H,W) or (H,W,1) are shown grey; a K-class mask (K > 2, class indices) is drawn one colour
per foreground class (:data:`CLASS_COLOURS`, in class order), and a contact sheet given the class names
draws their legend under the grid.
"""

from __future__ import annotations

import cv2
import numpy as np

# foreground classes 1, 2, ... (background is never tinted): green first, as a binary overlay
CLASS_COLOURS = ((0, 255, 0), (255, 0, 255), (0, 200, 255), (255, 160, 0), (255, 255, 0), (160, 80, 255),
                 (255, 0, 0), (0, 120, 0), (120, 60, 0), (255, 255, 255))


def class_colour(c: int) -> tuple[int, int, int]:
    """The RGB colour of foreground class ``c`` >= 1 (the palette repeats after 10 classes)."""
    return CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) as it is; a grey (H,W) or (H,W,1) image repeated over R, G, B."""
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return gray_to_rgb(image.reshape(image.shape[:2]))


def overlay(image: np.ndarray, mask: np.ndarray, color=(0, 255, 0), alpha: float = 0.35,
            num_classes: int = 2) -> np.ndarray:
    """RGB uint8 (H,W,3) of ``image`` (RGB or grey) with the mask tinted and its contours drawn.

    Binary (``num_classes`` 2): nonzero = foreground, in ``color``. K > 2: ``mask`` holds class indices and
    each foreground class c gets :func:`class_colour` (c) (``color`` is not used)."""
    out = as_rgb(image).copy()
    layers = [(mask > 0, color)] if num_classes == 2 else [(mask == c, class_colour(c)) for c in range(1, num_classes)]
    for m, rgb in layers:
        out[m] = (out[m] * (1 - alpha) + np.array(rgb) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, rgb, 1)
    return out


def colour_labels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A class-index map (H,W) as RGB uint8: background black, class c in :func:`class_colour` (c)
    (binary: foreground white, as a mask file looks)."""
    if num_classes == 2:
        return gray_to_rgb(np.where(mask > 0, 255, 0).astype(np.uint8))
    out = np.zeros((*mask.shape, 3), np.uint8)
    for c in range(1, num_classes):
        out[mask == c] = class_colour(c)
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


def legend(classes: tuple[str, ...] | list[str], width: int) -> np.ndarray:
    """White bands, ``width`` wide, naming each foreground class next to a swatch of its colour."""
    font, scale, thickness, swatch = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1, 14
    items = [(class_colour(c), name) for c, name in enumerate(classes) if c > 0]
    sizes = [swatch + 6 + cv2.getTextSize(name, font, scale, thickness)[0][0] + 16 for _, name in items]
    lines, x = [[]], 6
    for item, size in zip(items, sizes):
        if lines[-1] and x + size > width:
            lines.append([])
            x = 6
        lines[-1].append((x, item))
        x += size
    band = np.full((TITLE_BAND * len(lines), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        y = i * TITLE_BAND + (TITLE_BAND - swatch) // 2
        for x, (rgb, name) in line:
            band[y:y + swatch, x:x + swatch] = rgb
            cv2.rectangle(band, (x, y), (x + swatch - 1, y + swatch - 1), (0, 0, 0), 1)
            cv2.putText(band, name, (x + swatch + 6, y + swatch - 2), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return band


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2, min_cell: int = 128,
                  titles: list[str] | None = None, classes: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """A grid: one row per pair, one cell per view (each RGB uint8 (H,W,3) or grey (H,W[,1]), same size).

    Small cells are upscaled by an integer factor (nearest: pixels stay honest) to at least ``min_cell``
    pixels, so a 32-px polyp is visible. ``titles`` (one per column) go in a white band on top; ``classes``
    (K > 2 names, background first) add the legend of :func:`overlay`'s class colours at the bottom.
    """
    sheet = _grid(rows, pad, min_cell, titles)
    if classes is None or len(classes) <= 2:
        return sheet
    return np.concatenate([sheet, legend(classes, sheet.shape[1])])


def _grid(rows: list[list[np.ndarray]], pad: int, min_cell: int, titles: list[str] | None) -> np.ndarray:
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
            cell = as_rgb(cell)
            cell = cv2.resize(cell, (cw, ch), interpolation=cv2.INTER_NEAREST) if scale > 1 else cell
            y, x = top + pad + i * (ch + pad), pad + j * (cw + pad)
            sheet[y:y + ch, x:x + cw] = cell
    return sheet
