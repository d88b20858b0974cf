"""The diffusion process a model folder describes (its config's ``process`` entry)."""

from __future__ import annotations

from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.gaussian import GaussianDiffusion


def build_diffusion(kind: str, process: dict) -> BernoulliDiffusion | GaussianDiffusion:
    """The diffusion process of a model folder of ``kind`` (mask-diffusion | image-diffusion)."""
    cls = BernoulliDiffusion if kind == "mask-diffusion" else GaussianDiffusion
    return cls(timesteps=process["timesteps"], schedule=process["schedule"])
