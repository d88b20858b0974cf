"""The diffusion process a model folder describes (its config's ``process`` entry)."""

from __future__ import annotations

from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.gaussian import GaussianDiffusion


def build_diffusion(kind: str, process: dict) -> BernoulliDiffusion | GaussianDiffusion:
    """The diffusion process of a model folder of ``kind`` (mask-diffusion | image-diffusion).

    An image model's ``process`` names its ``prediction``; folders written before that option existed
    predict eps."""
    if kind == "mask-diffusion":
        return BernoulliDiffusion(timesteps=process["timesteps"], schedule=process["schedule"])
    return GaussianDiffusion(timesteps=process["timesteps"], schedule=process["schedule"],
                             prediction=process.get("prediction", "epsilon"))
