"""Classifier-free guidance scales as the commands take them (``sample --guidance``, ``attack
--purify-guidance``): ``auto`` or a number, checked against how the image model was trained.

Guidance (Ho & Salimans 2022) mixes the conditional output with the unconditional one,
out = out(x_t, null) + w (out(x_t, mask) - out(x_t, null)); w = 1 is the conditional model alone.
"""

from __future__ import annotations

import math

from augforge.errors import AugforgeError

# auto for a model trained with --cond-drop > 0: on a demo image model (cond-drop 0.1) consistency
# 0.19 / 0.45 / 0.69 / 0.74 and encoder Frechet 476 / 394 / 211 / 70 at guidance 1 / 2 / 3 / 4
# (docs/image-diffusion.md); above 3 polyps get more pronounced than real ones
TRAINED_GUIDANCE = 3.0


def trained_cond_drop(image_cfg: dict) -> float:
    """The ``--cond-drop`` an image model was trained with, from its config.json's ``made_by`` (0 for a
    folder without that record: trained before the option existed, or written by hand)."""
    return float(image_cfg.get("made_by", {}).get("options", {}).get("cond_drop", 0.0))


def parse_guidance(text: str, flag: str = "--guidance") -> float | None:
    """A guidance option's text: None for ``auto``, else the scale (a finite number >= 0)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise AugforgeError(f"{flag} must be auto or a number >= 0 (1: none), got {text!r}")
    return value


def resolve_guidance(text: str, image_cfg: dict, image_model: str, flag: str = "--guidance") -> float:
    """The classifier-free guidance scale to run the image model with.

    ``auto``: :data:`TRAINED_GUIDANCE` for an image model trained with ``--cond-drop`` > 0, else 1.
    A scale other than 1 on a model trained with ``--cond-drop 0`` is refused: guidance mixes in the
    unconditional output eps(x_t, null), which such a model never learned (Ho & Salimans 2022)."""
    cond_drop = trained_cond_drop(image_cfg)
    value = parse_guidance(text, flag)
    if value is None:
        return TRAINED_GUIDANCE if cond_drop > 0 else 1.0
    if value != 1.0 and cond_drop == 0.0:
        raise AugforgeError(f"{flag} {value:g}: {image_model} was trained with --cond-drop 0, so its "
                            f"unconditional branch is untrained; use {flag} auto (1 for this model) or an image "
                            "model trained with --cond-drop > 0")
    return value
