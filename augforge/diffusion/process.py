"""The diffusion process a model folder describes (its config's ``process`` entry)."""

from __future__ import annotations

from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.categorical import HYBRID_COEFF, CategoricalDiffusion
from augforge.diffusion.gaussian import GaussianDiffusion

MASK_PROCESSES = ("bernoulli", "categorical")


def build_diffusion(kind: str, process: dict) -> BernoulliDiffusion | CategoricalDiffusion | GaussianDiffusion:
    """The diffusion process of a model folder of ``kind`` (mask-diffusion | image-diffusion).

    A mask model's ``process`` is Bernoulli (binary masks, DASP's; folders without a ``kind`` entry) or,
    with ``"kind": "categorical"``, the K-class categorical process (``num_classes`` K). An image model's
    ``process`` names its ``prediction`` (folders written before that option existed predict eps) and,
    for K > 2 classes, ``num_classes`` (the one-hot mask condition; absent: binary)."""
    if kind == "mask-diffusion":
        process_kind = process.get("kind", "bernoulli")
        if process_kind == "categorical":
            return CategoricalDiffusion(num_classes=int(process["num_classes"]), timesteps=process["timesteps"],
                                        schedule=process["schedule"],
                                        hybrid_coeff=float(process.get("hybrid_coeff", HYBRID_COEFF)))
        if process_kind != "bernoulli":
            raise ValueError(f"mask process kind must be one of {MASK_PROCESSES}, got {process_kind!r}")
        return BernoulliDiffusion(timesteps=process["timesteps"], schedule=process["schedule"])
    return GaussianDiffusion(timesteps=process["timesteps"], schedule=process["schedule"],
                             prediction=process.get("prediction", "epsilon"),
                             num_classes=int(process.get("num_classes", 2)))
