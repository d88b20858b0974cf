"""``augforge train-mask-diffusion`` and ``augforge train-image-diffusion``.

Mask model (DASP §3.1): Bernoulli diffusion on the train-split masks, 1 channel in, 1 flip logit out;
on a dataset of K > 2 classes the categorical diffusion (:mod:`augforge.diffusion.categorical`), K one-hot
channels in, K logits of x_0 out, config "process": {"kind": "categorical", "num_classes": K, ...}.
Image model (DASP §3.2): Gaussian DDPM on the train-split images (C = 3 colour or 1 grey channels)
conditioned on their masks, C + 1 channels in (image + binary mask) or C + K (image + one-hot mask, config
"mask_encoding": "one-hot"), C out (ε or v). Both record the data's classes and channels (config.json's
"classes"/"channels", written when not binary/RGB) and save a model folder (docs/artifacts.md) with EMA weights.

Checkpoints (weights + train_state.pt) follow ``--save-every`` steps and ``--save-minutes`` of wall
time, whichever comes first; a rerun continues from the last one and first drops the metrics.jsonl
rows logged after it, so the log holds each step once.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from augforge.commands import COMMANDS
from augforge.configs import TrainDiffusionConfig, identity
from augforge.data.dataset import PairSet, load_pairset, open_output, read_dataset, run_record
from augforge.diffusion.categorical import HYBRID_COEFF
from augforge.diffusion.gaussian import PREDICTIONS
from augforge.diffusion.process import build_diffusion
from augforge.diffusion.train import EMA, DiffusionTrainLoop
from augforge.errors import AugforgeError
from augforge.models.folder import (
    CONFIG,
    STATE,
    append_metrics,
    load_train_state,
    make_config,
    save_model,
    save_train_state,
)
from augforge.models.unet import MODEL_SIZES, Denoiser, build_denoiser
from augforge.progress import log, progress_bar
from augforge.ranges import one_hot
from augforge.runtime import (
    TRAIN_DIFFUSION_BREAK_EVEN_STEPS,
    adam_kwargs,
    atomic_write_json,
    barrier,
    check_compile_mode,
    compile_decision,
    generator_for,
    init_distributed,
    read_json,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from augforge.stages.train_seg import drop_rows_after

KINDS = ("mask-diffusion", "image-diffusion")


def network_channels(kind: str, num_classes: int = 2, channels: int = 3) -> tuple[int, int]:
    """(in, out) channels of a diffusion UNet for data of K = ``num_classes`` classes and C = ``channels``.

    Mask model: (1, 1) binary (y_t in {-1, 1} in, a flip logit out); (K, K) for K > 2 (one-hot x_t in
    {-1, 1} in, K logits of x_0 out). Image model: (C + 1, C) binary (the mask in {-1, 1}); (C + K, C) for
    K > 2 (the one-hot mask in {-1, 1}). Binary RGB: (1, 1) and (4, 3), DASP's."""
    mask_channels = 1 if num_classes == 2 else num_classes
    if kind == "mask-diffusion":
        return mask_channels, mask_channels
    return channels + mask_channels, channels


def mask_process(num_classes: int, timesteps: int, schedule: str) -> dict:
    """A mask model's config "process": Bernoulli for binary masks (no "kind": DASP's folders, unchanged),
    categorical for K > 2 classes."""
    if num_classes == 2:
        return {"timesteps": timesteps, "schedule": schedule}
    return {"kind": "categorical", "num_classes": num_classes, "timesteps": timesteps, "schedule": schedule,
            "hybrid_coeff": HYBRID_COEFF}


def resize_pairs(pairs: PairSet, size: int) -> PairSet:
    """Downsample resident pairs (images: area; binary masks: area then threshold at 0.5; K-class masks:
    area of each class's one-hot channel, then the argmax, i.e. the majority class of each block, ties
    to the lower class)."""
    if pairs.images.shape[-1] == size:
        return pairs
    images = F.interpolate(pairs.images.float(), size=(size, size), mode="area").round().to(torch.uint8)
    if pairs.num_classes == 2:
        masks = (F.interpolate(pairs.masks.float(), size=(size, size), mode="area") >= 0.5).to(torch.uint8)
    else:
        shares = F.interpolate(one_hot(pairs.masks, pairs.num_classes), size=(size, size), mode="area")
        masks = shares.argmax(dim=1, keepdim=True).to(torch.uint8)
    return PairSet(images, masks, pairs.is_extra, pairs.ids, pairs.classes, pairs.channels)


def _check(cfg: TrainDiffusionConfig) -> None:
    if cfg.kind not in KINDS:
        raise AugforgeError(f"kind must be one of {KINDS}")
    if cfg.model_size not in MODEL_SIZES:
        raise AugforgeError(f"--model-size must be one of {', '.join(MODEL_SIZES)}, got {cfg.model_size!r}")
    for name in ("steps", "batch_size", "timesteps", "save_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise AugforgeError(f"--{name.replace('_', '-')} must be at least 1")
    if not cfg.minutes >= 0:
        raise AugforgeError(f"--minutes must be >= 0 (0: no time budget), got {cfg.minutes}")
    if not cfg.save_minutes >= 0:
        raise AugforgeError(f"--save-minutes must be >= 0 (0: --save-every alone), got {cfg.save_minutes}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise AugforgeError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.cond_drop <= 1.0:
        raise AugforgeError(f"--cond-drop must be in [0, 1], got {cfg.cond_drop}")
    if cfg.schedule not in ("", "linear", "cosine"):
        raise AugforgeError(f"--schedule must be linear or cosine, got {cfg.schedule!r}")
    check_compile_mode(cfg.compile)
    if cfg.kind == "image-diffusion" and cfg.prediction not in PREDICTIONS:
        raise AugforgeError(f"--prediction must be one of {', '.join(PREDICTIONS)}, got {cfg.prediction!r}")


def run(cfg: TrainDiffusionConfig) -> dict:
    _check(cfg)
    command = COMMANDS[f"train-{cfg.kind}"]  # its defaults ("": the schedule) and fixed values (masks: no cond_drop)
    cfg = replace(cfg, schedule=cfg.schedule or command.defaults["schedule"], **command.fixed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    world = init_distributed(device)
    if cfg.batch_size % world.world_size:
        raise AugforgeError(f"--batch-size {cfg.batch_size} (pairs per step, all ranks together) is not a "
                            f"multiple of the {world.world_size} ranks")
    seed_everything(cfg.seed)

    # 1. data: train-split pairs, resident on the device as uint8
    ds = read_dataset(Path(cfg.data))
    size = cfg.image_size or ds.image_size
    if size > ds.image_size:
        raise AugforgeError(f"--image-size {size} is larger than the dataset's {ds.image_size}px")
    pairs = resize_pairs(load_pairset([Path(cfg.data)], "train"), size).to(device)

    # 2. output folder: refuse a different run, continue the same one
    out = Path(cfg.out)
    options = identity(cfg)  # a rerun that differs only in the others continues
    options["data"] = str(Path(cfg.data).resolve())
    options["precision"] = precision  # the arithmetic used: auto and its value are one run
    made_by = run_record(f"train-{cfg.kind}", options)
    resumed = open_output(out, made_by, overwrite=cfg.overwrite, marker=CONFIG) if world.is_main else True
    num_classes, extra = ds.num_classes, {}
    if cfg.kind == "mask-diffusion":
        process = mask_process(num_classes, cfg.timesteps, cfg.schedule)
    else:
        process = {"timesteps": cfg.timesteps, "schedule": cfg.schedule, "prediction": cfg.prediction}
        if num_classes > 2:  # the one-hot condition: build_diffusion reads K from the process
            process["num_classes"] = num_classes
            extra["mask_encoding"] = "one-hot"
    in_ch, out_ch = network_channels(cfg.kind, num_classes, ds.channels)
    stored = read_json(out / CONFIG).get("network") if resumed and (out / CONFIG).exists() else None
    try:  # a run continued keeps the network its folder records, even if the preset has changed since
        model = Denoiser(stored) if stored else build_denoiser(cfg.model_size, in_ch, out_ch, size)
    except ValueError as e:
        raise AugforgeError(f"--image-size / --model-size: {e}") from None

    compiled: dict | None = None  # this run's compile choice, once made (config.json records the last run's)

    def config(steps_done: int, train_seconds: float = 0.0) -> dict:
        return {**make_config(cfg.kind, network=model.unet_kwargs, image_size=size, process=process,
                              data_fingerprint=ds.fingerprint(), made_by=made_by, steps_done=steps_done,
                              classes=ds.classes, channels=ds.channels, **extra),
                "train_seconds": round(train_seconds, 1), "precision": precision,
                **({"compile": compiled} if compiled else {})}

    if world.is_main and not (out / CONFIG).exists():
        atomic_write_json(out / CONFIG, config(0))
    barrier()  # the other ranks read train_state.pt only once rank 0 has judged the folder

    # 3. built objects: network, EMA, optimiser; restored from train_state.pt when continuing
    model.to(device)
    ema = EMA(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, **adam_kwargs(device))
    start, seconds_before = 0, 0.0
    state = load_train_state(out) if resumed else None
    if cfg.resume and state is None:
        raise AugforgeError(f"--resume: {out} holds no training state ({STATE}) of this run to continue")
    if state is not None:
        model.load_state_dict(state["model"])
        start = int(state["step"])
        ema.load_state_dict(state["ema"], num_updates=state.get("ema_updates", start))
        optimizer.load_state_dict(state["optimizer"])
        seconds_before = float(state.get("train_seconds", 0.0))
        log(f"continuing {out} from step {start}")
    if world.is_main:  # rows logged after the checkpoint (a kill before the next one) are trained again
        drop_rows_after(out, "step", start)
    budget = cfg.minutes * 60.0 - seconds_before if cfg.minutes else None
    note = ("" if start < cfg.steps and (budget is None or budget > 0) else
            f"already trained to --steps {cfg.steps} ({start} steps done); nothing to do" if start >= cfg.steps else
            f"already trained for --minutes {cfg.minutes:g} ({seconds_before:.0f} s); nothing to do")
    if note:  # the model stays as it is (train-seg does the same)
        log(f"train-{cfg.kind}: {out}: {note}")
        return {"out": str(out), "kind": cfg.kind, "steps_done": start, "image_size": size,
                "train_seconds": round(seconds_before, 1), "note": note}
    # 4. compile (the step's loss, network and loss together) when asked, or, with auto, when the steps
    # planned repay it; said once, recorded in config.json and the summary
    use_compile, compiled, message = compile_decision(f"train-{cfg.kind}", cfg.compile, device, cfg.steps - start,
                                                      break_even=TRAIN_DIFFUSION_BREAK_EVEN_STEPS)
    if world.is_main and message:
        log(message)
    net = model
    if world.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    diffusion = build_diffusion(cfg.kind, process)
    # per-rank stream, re-derived from the step on resume (so resuming works with another world size)
    generator = generator_for(cfg.seed, world.rank, start, device=device)
    # --batch-size is per step over all ranks: each rank draws its share
    loop = DiffusionTrainLoop(net, diffusion, pairs, optimizer, ema, cfg.batch_size // world.world_size, generator,
                              condition_on_mask=cfg.kind == "image-diffusion", cond_drop=cfg.cond_drop,
                              compile=use_compile, precision=precision)

    def on_log(row: dict) -> None:
        if world.is_main:
            append_metrics(out, row)

    def on_save(step: int) -> None:
        if world.is_main:
            seconds = seconds_before + time.perf_counter() - t_start
            save_model(out, config(step, seconds), ema.state_dict())
            save_train_state(out, {"model": model.state_dict(), "ema": ema.state_dict(),
                                   "ema_updates": ema.num_updates, "optimizer": optimizer.state_dict(),
                                   "step": step, "train_seconds": seconds})

    # 5. train; Ctrl-C saves a resumable state, a NaN loss keeps the last good checkpoint
    last, t_start = start, time.perf_counter()
    with progress_bar(f"train {cfg.kind}", total=cfg.steps, completed=start) as advance:
        def track(n: int = 1, **fields) -> None:
            nonlocal last
            last += n
            advance(n, **fields)

        try:
            history = loop.run(start, cfg.steps, log_every=cfg.log_every, on_log=on_log,
                               save_every=cfg.save_every, on_save=on_save, progress=track,
                               time_budget_s=budget, decide_every=cfg.log_every if world.world_size > 1 else 1,
                               save_seconds=cfg.save_minutes * 60.0)
        except FloatingPointError as e:
            raise AugforgeError(f"{e}; stopped. {out} keeps the last good checkpoint "
                                f"(lower --lr or check the data)") from None
        except KeyboardInterrupt:
            on_save(last)
            raise
    final = history[-1] if history else {}
    return {"out": str(out), "kind": cfg.kind, "steps_done": loop.steps_done, "image_size": size,
            "train_seconds": round(seconds_before + time.perf_counter() - t_start, 1),
            "final_loss": final.get("loss"), "steps_per_s": final.get("steps_per_s"), "compile": compiled,
            "precision": precision,
            "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
