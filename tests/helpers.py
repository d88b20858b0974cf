"""Shared test helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-seg"


def write_pair_folder(root: Path, n: int = 6, size: tuple[int, int] = (40, 48), image_dir="images", mask_dir="masks",
                      ext=".png", seed: int = 0) -> Path:
    """A tiny Kvasir-style source folder with random images and rectangle masks."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5 + i: 20 + i, 8:30] = 255
        cv2.imwrite(str(root / image_dir / f"p{i}{ext}"), img)
        cv2.imwrite(str(root / mask_dir / f"p{i}{ext}"), mask)
    return root


def tiny_model_folders(root: Path, *, size: int = 32, prediction: str = "v", cond_drop: float = 0.1) -> dict[str, Path]:
    """Untrained, valid augforge model folders of the three kinds (seeded; seconds on a CPU), with a
    made_by record like a trainer's and, for the diffusion models, a train_state.pt holding raw weights."""
    import torch

    from augforge.models.folder import make_config, save_model, save_train_state
    from augforge.models.segmenter import build_segmenter, segmenter_config
    from augforge.models.unet import Denoiser

    def unet(i: int, o: int) -> dict:
        return dict(sample_size=size, in_channels=i, out_channels=o, block_out_channels=[16, 32],
                    layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                    up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=8)

    torch.manual_seed(0)
    out = {}
    for kind, (i, o), process, options in (
            ("mask-diffusion", (1, 1), {"timesteps": 100, "schedule": "cosine"}, {}),
            ("image-diffusion", (4, 3), {"timesteps": 100, "schedule": "linear", "prediction": prediction},
             {"cond_drop": cond_drop, "prediction": prediction})):
        net = Denoiser(unet(i, o))
        made_by = {"command": f"train-{kind}", "options": {"data": str(root / "data"), "steps": 3, **options},
                   "version": "test"}
        save_model(root / kind, make_config(kind, network=net.unet_kwargs, image_size=size, process=process,
                                            data_fingerprint="0123456789abcdef", made_by=made_by, steps_done=3),
                   net.state_dict())
        raw = {k: v + 0.01 for k, v in net.state_dict().items()}  # "raw" weights other than the EMA ones
        save_train_state(root / kind, {"model": raw, "step": 3})
        out[kind] = root / kind
    network = segmenter_config("unet", "resnet18")
    seg = build_segmenter(network, pretrained=False)
    save_model(root / "segmenter", make_config("segmenter", network=network, image_size=size,
                                               data_fingerprint="0123456789abcdef"), seg.state_dict())
    out["segmenter"] = root / "segmenter"
    return out
