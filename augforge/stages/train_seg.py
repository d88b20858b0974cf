"""``augforge train-seg DATA [--extra DATA2 ...] --out DIR``: train a segmenter (DASP §2.4).

The segmenter follows DATA: its image channels C (1 grey, 3 colour) are the network's input and its
classes K give the outputs (one logit for binary data; K logits, softmax, for K > 2, trained with the
soft Dice over the foreground classes, plus the K-class cross-entropy with ``--loss dice+bce``, also
spelled dice+ce: :mod:`augforge.seg.losses`). config.json records the classes and channels (binary
colour folders as before). ``--extra`` datasets and an ``--init-from`` segmenter of other classes or
channels are refused in one line before anything is written.

Real train pairs of DATA plus every train pair of the ``--extra`` datasets (generated or attacked)
are held as uint8 tensors on the training device; the loss is DASP Eq. 11 (``--extra-weight``
weighs the extra-pair mean). The budget is ``--steps`` optimizer steps, or ``--epochs`` epochs;
``--extra-ratio`` fixes the share of extra pairs in each batch (:mod:`augforge.seg.train`).
``--init-from`` starts from another segmenter's weights. Each epoch is validated on DATA's val
split. The model folder gets the best-val-mDice weights (model.safetensors + config.json, whose
``training`` entry counts steps, epochs and presentations so far), the last state for resuming
(train_state.pt) and one metrics.jsonl line per epoch. A rerun of the same command continues
from train_state.pt; a different run into the same folder is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from augforge.configs import TrainSegConfig, identity
from augforge.data.dataset import load_pairset, open_output, read_dataset, run_record
from augforge.errors import AugforgeError
from augforge.hub import shown
from augforge.models.folder import (
    CONFIG,
    METRICS,
    STATE,
    append_metrics,
    check_model_data,
    load_state,
    load_train_state,
    make_config,
    model_fingerprint,
    read_config,
    read_metrics,
    save_model,
    save_train_state,
)
from augforge.progress import log, progress_bar
from augforge.runtime import (
    TRAIN_SEG_BREAK_EVEN_STEPS,
    adam_kwargs,
    atomic_write_bytes,
    atomic_write_json,
    barrier,
    check_compile_mode,
    compile_decision,
    generator_for,
    init_distributed,
    read_json,
    resolve_device,
    resolve_precision,
)

SCHEDULES = ("constant", "cosine")


def _options(cfg: TrainSegConfig, init_fingerprint: str = "") -> dict:
    """The options that define the run (made_by): data paths resolved, the --init-from weights'
    fingerprint added; output and runtime switches left out."""
    options = identity(cfg)
    options["data"] = str(Path(cfg.data).resolve())
    options["extra"] = [str(Path(p).resolve()) for p in cfg.extra]
    if cfg.init_from:
        options["init_from"] = shown(cfg.init_from)  # a folder's absolute path; a hf:// reference pinned
        options["init_from_fingerprint"] = init_fingerprint
    return options


def _check(cfg: TrainSegConfig) -> dict:
    """Validate the options; returns the network description (segmenter_config)."""
    from augforge.models.segmenter import segmenter_config
    from augforge.seg.losses import LOSS_KINDS

    if cfg.epochs < 1:
        raise AugforgeError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.steps < 0:
        raise AugforgeError(f"--steps must be >= 0 (0: use --epochs), got {cfg.steps}")
    if not cfg.minutes >= 0:
        raise AugforgeError(f"--minutes must be >= 0 (0: no time budget), got {cfg.minutes}")
    if cfg.batch_size < 2:
        raise AugforgeError(f"--batch-size must be >= 2 (BatchNorm needs two images per batch), got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise AugforgeError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.extra_weight < 0:
        raise AugforgeError(f"--extra-weight must be >= 0, got {cfg.extra_weight}")
    if cfg.extra_ratio == 1 and cfg.extra_weight == 0:
        raise AugforgeError("--extra-ratio 1 trains on extra pairs alone and --extra-weight 0 gives them no weight: "
                            "nothing would train")
    if not 0.0 <= cfg.extra_ratio <= 1.0:
        raise AugforgeError(f"--extra-ratio must be in [0, 1] (0: extra pairs mixed in; 1: extra pairs only), "
                            f"got {cfg.extra_ratio}")
    if cfg.extra_ratio > 0 and not cfg.extra:
        raise AugforgeError(f"--extra-ratio {cfg.extra_ratio:g} needs extra pairs (--extra)")
    if cfg.loss not in LOSS_KINDS:
        raise AugforgeError(f"--loss must be one of {', '.join(LOSS_KINDS)}, got {cfg.loss!r}")
    if cfg.schedule not in SCHEDULES:
        raise AugforgeError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    check_compile_mode(cfg.compile)
    try:
        return segmenter_config(cfg.arch, cfg.encoder, cfg.encoder_weights)
    except ValueError as e:
        raise AugforgeError(f"--arch/--encoder/--encoder-weights: {e}") from None


def _fingerprint(roots: list[Path]) -> str:
    """The data fingerprint of DATA, or of DATA + extras combined."""
    prints = [read_dataset(r).fingerprint() for r in roots]
    return prints[0] if len(prints) == 1 else hashlib.sha256("+".join(prints).encode()).hexdigest()[:16]


def _check_extras(cfg: TrainSegConfig, data) -> None:
    """Each --extra dataset must have DATA's classes and image channels (one line naming it)."""
    for extra in cfg.extra:
        theirs = read_dataset(Path(extra))
        if theirs.classes != data.classes:
            raise AugforgeError(f"--extra {extra}: its {len(theirs.classes)} classes ({', '.join(theirs.classes)}) "
                                f"differ from {cfg.data}'s {data.num_classes} ({', '.join(data.classes)})")
        if theirs.channels != data.channels:
            raise AugforgeError(f"--extra {extra}: {theirs.channels}-channel images, {cfg.data} has "
                                f"{data.channels}-channel ones")


def _init_source(cfg: TrainSegConfig, network: dict, image_size: int, data) -> tuple[Path, str]:
    """--init-from: check that the segmenter there (a folder, an exported folder or a hf:// reference) has
    this run's network, image size, classes and channels; returns it and its :func:`model_fingerprint`."""
    source = Path(cfg.init_from)
    try:
        theirs = read_config(source, kind="segmenter")  # no folder, wrong kind, no weights
    except AugforgeError as e:
        raise AugforgeError(f"--init-from {e}") from None
    check_model_data(f"--init-from {source}", theirs, cfg.data, data.classes, data.channels)
    for key, flag in (("arch", "--arch"), ("encoder", "--encoder")):
        if theirs["network"].get(key) != network[key]:
            raise AugforgeError(f"--init-from {source}: its {flag} is {theirs['network'].get(key)}, this run's is "
                                f"{network[key]}")
    if int(theirs["image_size"]) != image_size:
        raise AugforgeError(f"--init-from {source}: trained on {theirs['image_size']}px images, the data is "
                            f"{image_size}px")
    return source, model_fingerprint(source)


def _load_init(model: torch.nn.Module, weights: Path) -> None:
    try:
        model.load_state_dict(load_state(weights))
    except Exception as e:  # safetensors' own error types, or tensors that do not fit
        raise AugforgeError(f"--init-from {weights}: weights do not load into this network ({str(e).splitlines()[0]})") from None


def drop_rows_after(out: Path, key: str, last: int) -> None:
    """Keep the metrics.jsonl lines whose ``key`` (epoch, step) is <= ``last``, the checkpoint a run
    continues from: rows logged after it by a run killed before its next checkpoint are dropped (and a
    torn last line), so the continued run logs each epoch or step once."""
    path = out / METRICS
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []

    def kept(line: str) -> bool:
        try:
            return json.loads(line)[key] <= last
        except (json.JSONDecodeError, KeyError, TypeError):
            return False

    if not all(kept(line) for line in lines):
        atomic_write_bytes(path, "".join(line for line in lines if kept(line)).encode())


def run(cfg: TrainSegConfig) -> dict:
    from augforge.models.segmenter import build_segmenter, segmenter_classes, segmenter_config
    from augforge.seg.augment import parse_augs
    from augforge.seg.train import TrainLoop, batch_plan

    network = _check(cfg)
    data = read_dataset(Path(cfg.data))  # its classes and channels make the network (never a flag)
    network = segmenter_config(network["arch"], network["encoder"], network["encoder_weights"],
                               in_channels=data.channels, classes=segmenter_classes(data.num_classes))
    _check_extras(cfg, data)
    try:
        augment = parse_augs(cfg.aug, num_classes=data.num_classes)
    except ValueError as e:
        raise AugforgeError(f"--aug: {e}") from None
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    world = init_distributed(device)  # torchrun: DDP, rank 0 writes the model folder
    if cfg.batch_size % world.world_size or cfg.batch_size // world.world_size < 2:
        raise AugforgeError(f"--batch-size {cfg.batch_size} must split into >= 2 pairs on each of the "
                            f"{world.world_size} ranks")
    out = Path(cfg.out)
    roots = [Path(cfg.data), *map(Path, cfg.extra)]

    # 1. data: uint8 tensors, moved to the device once; the batches they make
    image_size = data.image_size
    if image_size % 32:
        raise AugforgeError(f"{roots[0]}: image size {image_size} is not a multiple of 32 (the segmenters downsample 5 times)")
    train = load_pairset(roots, "train").to(device)
    val = load_pairset(roots[:1], "val").to(device)
    if len(train) < 2:
        raise AugforgeError(f"{roots[0]}: needs at least 2 training pairs, has {len(train)}")
    n_extra = int(train.is_extra.sum())
    try:
        plan = batch_plan(len(train) - n_extra, n_extra, cfg.batch_size, extra_ratio=cfg.extra_ratio,
                          epochs=cfg.epochs, steps=cfg.steps, world_size=world.world_size)
    except ValueError as e:
        raise AugforgeError(f"{roots[0]}: {e}") from None
    init_weights, init_fingerprint = _init_source(cfg, network, image_size, data) if cfg.init_from else (None, "")

    # 2. output folder: refuse a different run, continue the same one
    made_by = run_record("train-seg", {**_options(cfg, init_fingerprint), "precision": precision})
    resumed = open_output(out, made_by, overwrite=cfg.overwrite, marker=CONFIG) if world.is_main else True
    barrier()  # the other ranks read train_state.pt only once rank 0 has judged the folder
    state = load_train_state(out) if resumed else None
    if cfg.resume and state is None:
        raise AugforgeError(f"--resume: {out} holds no training state ({STATE}) of this run to continue")

    # 3. built objects
    try:
        with torch.random.fork_rng(devices=[]):  # seeded weight init, global RNG left as it was
            torch.manual_seed(cfg.seed)
            model = build_segmenter(network).to(device)
    except ValueError as e:
        raise AugforgeError(f"--encoder-weights: {e}") from None
    if init_weights is not None:
        _load_init(model, init_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, **adam_kwargs(device))
    # stepped per optimizer step: anneals to 0 over the whole budget (a --minutes stop comes before)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.total_steps)
                 if cfg.schedule == "cosine" else None)
    config = make_config("segmenter", network=network, image_size=image_size, data_fingerprint=_fingerprint(roots),
                         made_by=made_by, classes=data.classes, channels=data.channels)
    config["precision"] = precision
    config["init_from"] = ({"path": shown(cfg.init_from), "fingerprint": init_fingerprint}
                           if cfg.init_from else None)
    if state is not None and read_json(out / CONFIG).get("data_fingerprint") != config["data_fingerprint"]:
        raise AugforgeError(f"{out}: was trained on different data under the same paths; pass --overwrite to start over")

    # compile the forward when asked, or, with auto, when the steps still planned repay it (said once)
    use_compile, compiled, message = compile_decision(
        "train-seg", cfg.compile, device, plan.total_steps - (int(state["step"]) if state else 0),
        break_even=TRAIN_SEG_BREAK_EVEN_STEPS)
    if world.is_main and message:
        log(message)

    def record(loop: TrainLoop) -> dict:
        """config.json's account of the training so far (the weights are those of ``best``)."""
        return {**config, "steps_done": loop.best["step"], "best": loop.best, "compile": compiled, "training": {
            "steps": loop.step, "total_steps": plan.total_steps, "epochs": loop.epoch,
            "steps_per_epoch": plan.steps_per_epoch, "batch_size": plan.batch_size,
            "real_per_batch": plan.real if plan.stratified else None,
            "extra_per_batch": plan.extra if plan.stratified else None,
            "real_pairs": len(loop.real_index), "extra_pairs": len(loop.extra_index),
            "real_seen": loop.real_seen, "extra_seen": loop.extra_seen, "real_passes": round(loop.real_passes, 4),
            "train_seconds": round(loop.train_seconds, 1)}}

    def on_epoch_end(row: dict, loop: TrainLoop) -> None:
        if not world.is_main:
            return
        if row["is_best"]:
            save_model(out, record(loop), model.state_dict())
        else:
            atomic_write_json(out / CONFIG, record(loop))
        append_metrics(out, row)
        save_train_state(out, loop.state_dict())
        advance(0, loss=row["loss"], val_mDice=row["val_mDice"], img_s=row["images_per_s"])

    loop = TrainLoop(model, optimizer, scheduler, train, val, epochs=cfg.epochs, steps=cfg.steps,
                     batch_size=cfg.batch_size, device=device, generator=generator_for(cfg.seed, device=device),
                     seed=cfg.seed, extra_ratio=cfg.extra_ratio, augment=augment, loss=cfg.loss,
                     extra_weight=cfg.extra_weight, compile=use_compile, precision=precision,
                     rank=world.rank, world_size=world.world_size, channels_last=device.type == "cuda",
                     time_budget_s=cfg.minutes * 60.0 if cfg.minutes else None,
                     on_step=lambda: advance(1), on_epoch_end=on_epoch_end)
    if state is not None:
        rebuilt = loop.load_state_dict(state)
        if rebuilt:
            log(f"train-seg: {out}/{STATE} was saved by an older augforge; rebuilt: {rebuilt}")
        log(f"train-seg: resuming {out} at step {loop.step}/{plan.total_steps} (epoch {loop.epoch})")
    elif world.is_main:
        save_model(out, record(loop), model.state_dict())  # a valid folder from the start (untrained weights)
    if world.is_main:
        drop_rows_after(out, "epoch", loop.epoch)

    # 4. train (nothing when the budget is spent: the model stays as it is, as train-*-diffusion does)
    note = ("" if loop.step < plan.total_steps and not (cfg.minutes and loop.train_seconds >= cfg.minutes * 60) else
            f"already trained to {plan.total_steps} steps; nothing to do" if loop.step >= plan.total_steps else
            f"already trained for --minutes {cfg.minutes:g} ({loop.train_seconds:.0f} s); nothing to do")
    if note:
        log(f"train-seg: {out}: {note}")
    with progress_bar("train-seg", total=plan.total_steps, completed=loop.step) as advance:
        try:
            loop.run()
        except FloatingPointError as e:
            raise AugforgeError(f"{e}; lower --lr (now {cfg.lr}) or check the data") from None
    barrier()  # rank 0 has written the last epoch's files

    rows = read_metrics(out)
    return {
        "out": str(out),
        "epochs": loop.epoch,
        "train_seconds": round(loop.train_seconds, 1),
        "steps": loop.step,
        "total_steps": plan.total_steps,
        "train_pairs": len(train),
        "extra_pairs": n_extra,
        "real_seen": loop.real_seen,
        "extra_seen": loop.extra_seen,
        "real_passes": round(loop.real_passes, 4),
        "best_epoch": loop.best["epoch"],
        "best_step": loop.best["step"],
        "best_val_mDice": loop.best["val_mDice"],
        "best_val_mIoU": loop.best["val_mIoU"],
        "last_loss": rows[-1]["loss"] if rows else None,
        "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows) if rows else None,
        "train_seconds_per_epoch": sum(r["train_seconds"] for r in rows) / len(rows) if rows else None,
        "compile": compiled,
        "precision": precision,
        **({"note": note} if note else {}),
    }
