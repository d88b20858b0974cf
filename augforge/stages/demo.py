"""``augforge demo``: the whole DASP chain on the embedded synthetic polyps, through the real stages.

synthesize → train-seg (real only) → train-mask-diffusion → train-image-diffusion → sample →
attack diff-pgd --weighted → train-seg (real + generated + attacked) → evaluate both → report.
Each step calls the same ``run(cfg)`` its command calls; a rerun continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from augforge.configs import (AttackConfig, DemoConfig, EvaluateConfig, SampleConfig, SynthesizeConfig,
                              TrainDiffusionConfig, TrainSegConfig)
from augforge.progress import log
from augforge.stages import attack, evaluate, prepare, report, sample, train_diffusion, train_seg

DEMO_SEGMENTER = dict(arch="unet", encoder="resnet18", batch_size=16, lr=1e-3, aug="basic")


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    if cfg.overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    p = {name: str(out / name) for name in ("data", "seg-real", "mask-model", "image-model", "generated",
                                            "attacked", "seg-augmented")}
    common = dict(seed=cfg.seed, device=cfg.device)
    timings: dict[str, float] = {}

    def step(name: str, fn, stage_cfg) -> dict:
        log(f"[bold]demo[/]: {name}")
        t0 = time.perf_counter()
        result = fn(stage_cfg)
        timings[name] = round(time.perf_counter() - t0, 1)
        return result

    diffusion = dict(steps=cfg.diffusion_steps, batch_size=16, lr=1e-3, model_size="tiny", ema_decay=0.99,
                     save_every=cfg.diffusion_steps, log_every=25, **common)
    # 1. data
    step("synthesize", prepare.run_synthesize, SynthesizeConfig(p["data"], n=cfg.n, size=cfg.size, seed=cfg.seed))
    # 2. baseline segmenter on real pairs only (also the attacked network)
    step("train-seg (real)", train_seg.run,
         TrainSegConfig(p["data"], p["seg-real"], epochs=cfg.seg_epochs, **DEMO_SEGMENTER, **common))
    # 3. the two diffusion models
    step("train-mask-diffusion", train_diffusion.run,
         TrainDiffusionConfig(p["data"], p["mask-model"], kind="mask-diffusion", **diffusion))
    step("train-image-diffusion", train_diffusion.run,
         TrainDiffusionConfig(p["data"], p["image-model"], kind="image-diffusion", **diffusion))
    # 4. new pairs, then Diff-PGD with uncertainty weighting (DASP) on them
    step("sample", sample.run, SampleConfig(p["generated"], mask_model=p["mask-model"], image_model=p["image-model"],
                                            n=cfg.generated, sampler="ddim", sample_steps=20, mask_sample_steps=50,
                                            batch_size=32, **common))
    step("attack diff-pgd --weighted", attack.run,
         AttackConfig(p["generated"], p["seg-real"], p["attacked"], method="diff-pgd", weighted=True,
                      image_model=p["image-model"], steps=cfg.attack_steps, batch_size=32, **common))
    # 5. segmenter on real + generated + attacked pairs
    step("train-seg (augmented)", train_seg.run,
         TrainSegConfig(p["data"], p["seg-augmented"], extra=(p["generated"], p["attacked"]), epochs=cfg.seg_epochs,
                        **DEMO_SEGMENTER, **common))
    # 6. evaluate both on the real test split, then the report
    rows = []
    for name in ("seg-real", "seg-augmented"):
        metrics = step(f"evaluate {name}", evaluate.run,
                       EvaluateConfig(p[name], p["data"], out=str(out / f"eval-{name}.json"), **common))
        rows.append({"segmenter": name, "mIoU": metrics["mIoU"], "mDice": metrics["mDice"]})
    rep = step("report", report.run_report, out)
    return {"out": str(out), "report": rep["report"], "contact_sheets": [p["generated"] + "/contact_sheet.png",
                                                                         p["attacked"] + "/contact_sheet.png"],
            "seconds": timings, "total_seconds": round(sum(timings.values()), 1), "tables": {"real-only vs augmented": rows}}
