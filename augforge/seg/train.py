"""The segmentation training loop (DASP §2.4, Eq. 11) and batched prediction; no file I/O.

:class:`TrainLoop` follows improved-diffusion's ``TrainLoop``: it is handed built objects (model,
optimizer, scheduler, in-memory :class:`~augforge.data.dataset.PairSet` splits, an augmentation,
the loss settings, a device and a seeded generator), runs epochs, and reports through callbacks;
the stage owns files (weights, ``train_state.pt``, ``metrics.jsonl``).

The budget is a number of optimizer steps (``steps``, or ``epochs`` x the steps of one epoch) and
the batches follow a :class:`BatchPlan` (:func:`batch_plan`), made in one of two ways:

- **stratified** (``extra_ratio`` r > 0, and every run without extra pairs): each batch of B holds
  ``round(r*B)`` extra pairs and ``B - round(r*B)`` real ones (r = 1: extra pairs only, for
  pre-training on generated pairs; an epoch is then one pass over the extra pairs). The real pairs come from a stream of
  permutations of the real set, pass k drawn with its own generator ``generator_for(seed,
  REAL_STREAM, k)`` and cut into full real batches; an epoch is one such pass over the real pairs.
  So two runs with the same seed, real set and real pairs per batch see the same real pairs in the
  same order at every step, whatever their extra sets (a real-only control whose batch size is
  ``B - round(r*B)`` included). The extra pairs come from a stream of their own
  (``generator_for(seed, EXTRA_STREAM, k)``), read on continuously whatever the extra set's size.
- **mixed** (r = 0 with extra pairs, DASP's recipe): one permutation of all training pairs per
  epoch, drawn with ``generator`` and cut into full batches.

Both drop a last partial batch (a batch of size 1 would crash BatchNorm layers that pool to 1x1,
e.g. DeepLabv3+'s ASPP image pooling). Each batch (uint8 on the device -> [0, 1] floats) is
augmented on the device, image and mask together, then one Adam step on the DASP loss (Eq. 11:
per-image soft Dice averaged separately over the real and the extra pairs of the batch) and one
scheduler step (a schedule anneals over the whole step budget); losses are summed on the device,
so the host syncs once per epoch. After each epoch (the last one may be cut short by the step
budget) the val split is predicted and scored (mean per-image IoU/Dice at threshold 0.5) and the
best-val-mDice epoch is tracked.

Under torchrun (``world_size`` > 1) the network is wrapped in DistributedDataParallel: every rank
builds the same global batches and takes its own ``batch_size / world_size`` share of each (a
contiguous slice when mixed, every ``world_size``-th pair when stratified, so that each rank holds
both kinds when each has at least N pairs), so an epoch covers the data once whatever the number of ranks, and the step count,
the generator state and hence ``train_state.pt`` mean the same for any N (resume with another N
works). Each rank divides its Eq. 11 group sums by the global batch's group counts / N
(:func:`rank_group_sizes`), so the gradients DDP averages are those of the whole batch and λ means the
same for any N; BatchNorm statistics are synchronised on CUDA
(SyncBatchNorm) and per rank on the CPU (gloo). Every rank validates the whole (small) val split,
so all ranks agree on the best epoch, and the time budget is one decision for all ranks
(:func:`~augforge.runtime.any_rank`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from augforge.data.dataset import PairSet
from augforge.runtime import all_reduce_mean, any_rank, autocast, generator_for
from augforge.seg.losses import dasp_loss
from augforge.seg.metrics import consistency_scores, per_image_scores

Augment = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device | str,
            precision: str) -> torch.Tensor:
    """Logits (N, K', H, W) float32 on ``device`` (K' = 1 binary, K classes) for images (N, C, H, W) in [0, 1].

    ``images`` may also be uint8 in [0, 255] (a :class:`PairSet`'s storage): each batch is then
    converted to [0, 1] on the device, so a whole split never exists as floats. The model is run
    in eval mode (its previous mode is restored), under bf16 autocast at ``precision`` "bf16"
    (:func:`augforge.runtime.resolve_precision`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        with autocast(device, precision):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out)


REAL_STREAM, EXTRA_STREAM = 1, 2  # generator_for keys of the real and the extra index streams


def rank_group_sizes(is_extra: torch.Tensor, world_size: int) -> torch.Tensor:
    """What each rank divides its (real, extra) loss sums by: (steps, 2) float, the global batches' group
    counts / ``world_size`` (an absent group counted as 1).

    is_extra: (steps, B) bool, the global batches. DDP averages the ranks' gradients, so a rank whose sums
    are divided by count / N contributes its share of the global batch's Eq. 11 (:func:`dasp_loss`):
    the gradient is that of one process holding the whole batch, whatever the split of each group over
    the ranks (an extra share smaller than N, counts that do not divide by N). With N = 1 these are the
    batch's own counts.
    """
    extra = is_extra.sum(1, dtype=torch.float32)
    return torch.stack([is_extra.shape[1] - extra, extra], 1).clamp_min(1.0) / world_size


def index_stream(seed: int, key: int, size: int, start: int, count: int) -> torch.Tensor:
    """Items ``start`` .. ``start + count - 1`` (int64, CPU) of the endless stream of permutations of
    ``range(size)`` whose pass k is ``randperm(size)`` drawn with ``generator_for(seed, key, k)``.

    A function of its arguments alone (no generator state), so a resumed run and a run with another
    extra set read the same items at the same positions.
    """
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    first, last = start // size, (start + count - 1) // size
    passes = torch.cat([torch.randperm(size, generator=generator_for(seed, key, k)) for k in range(first, last + 1)])
    offset = start - first * size
    return passes[offset:offset + count]


@dataclass(frozen=True)
class BatchPlan:
    """How :class:`TrainLoop` makes its batches (module docstring).

    batch_size: pairs per global batch (after clamping to the data when mixed); real/extra: real and
    extra pairs in each batch when ``stratified`` (0 and 0 when mixed: the share varies);
    steps_per_epoch: optimizer steps of one epoch; total_steps: the step budget of the run.
    """

    batch_size: int
    real: int
    extra: int
    steps_per_epoch: int
    total_steps: int
    stratified: bool


def batch_plan(n_real: int, n_extra: int, batch_size: int, *, extra_ratio: float = 0.0, epochs: int = 1,
               steps: int = 0, world_size: int = 1) -> BatchPlan:
    """The batches of a run with ``n_real`` real and ``n_extra`` extra training pairs.

    extra_ratio r in [0, 1]: 0 mixes extra pairs in with the real ones (stratified anyway when there
    are none); r > 0 gives ``round(r * batch_size)`` extra pairs per batch (halves round up); r = 1
    trains on the extra pairs alone (an epoch: one pass over them, at least one step, so a set smaller
    than a batch repeats within it; the real pairs are not read).
    steps: the budget in optimizer steps; 0 takes ``epochs`` epochs. Raises ValueError naming the
    option at fault.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= extra_ratio <= 1.0:
        raise ValueError(f"--extra-ratio must be in [0, 1] (0: extra pairs mixed in; 1: extra pairs only), "
                         f"got {extra_ratio}")
    if extra_ratio > 0 and n_extra == 0:
        raise ValueError(f"--extra-ratio {extra_ratio:g} needs extra pairs (--extra)")
    if steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: use --epochs), got {steps}")
    if steps == 0 and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if n_real < 1:
        raise ValueError("need at least one real training pair")
    if extra_ratio == 1.0:  # extra pairs only: an epoch is one pass over them (at least one step)
        per_epoch, real, extra, stratified = max(1, n_extra // batch_size), 0, batch_size, True
    elif extra_ratio > 0:
        extra = math.floor(extra_ratio * batch_size + 0.5)
        real = batch_size - extra
        if extra < 1 or real < 1:
            raise ValueError(f"--extra-ratio {extra_ratio:g} of --batch-size {batch_size} gives {real} real and "
                             f"{extra} extra pairs per batch; both must be >= 1")
        if real > n_real:
            raise ValueError(f"--batch-size {batch_size} at --extra-ratio {extra_ratio:g} takes {real} real pairs "
                             f"per batch; the real training set has {n_real}")
        per_epoch, stratified = n_real // real, True
    else:
        total = n_real + n_extra
        batch_size = min(batch_size, total - total % world_size)
        if batch_size < 1:
            raise ValueError(f"{total} training pairs do not fill one batch on each of {world_size} ranks")
        real, extra, stratified = (batch_size, 0, True) if n_extra == 0 else (0, 0, False)
        per_epoch = total // batch_size
    return BatchPlan(batch_size, real, extra, per_epoch, steps or epochs * per_epoch, stratified)


class TrainLoop:
    """Step-budgeted segmentation training in epochs (see the module docstring for the batches).

    model: images (B, C, H, W) in [0, 1] -> logits (B, 1, H, W) (binary) or (B, K, H, W) (K classes; masks hold
    the class index; loss and validation follow the logits, :mod:`augforge.seg.losses`). train/val: PairSets, already on
    ``device``. epochs/steps/extra_ratio/batch_size: the :class:`BatchPlan` (``steps`` > 0 overrides
    ``epochs``). seed: of the real and extra index streams (stratified batches). augment:
    ``aug(x, y, generator) -> (x, y)`` (e.g. ``seg.augment.parse_augs``). loss: "dice" | "dice+bce" (= "dice+ce");
    extra_weight: λ, the weight of the extra-pair mean in Eq. 11. scheduler: stepped once per
    optimizer step (build it over ``plan.total_steps``). generator: on ``device``; draws the mixed
    batch order and the augmentations (its state is part of :meth:`state_dict`, so a resumed run
    repeats the uninterrupted one). compile: run the training forward pass through ``torch.compile``
    (the weights stay those of ``model``); every training batch is full (:func:`batch_plan` drops the
    last partial one) and in train mode, so it compiles once; validation runs the eager model, whose
    eval mode and partial last batch would each compile again. precision: "bf16" runs the forward passes
    (training and validation) under bf16 autocast, "fp32" in float32. rank/world_size: this process's place under torchrun (the
    process group must be initialised when world_size > 1). channels_last: NHWC memory format for the
    network and its inputs (faster convolutions on GPUs). time_budget_s: stop after the epoch at which
    ``train_seconds`` reaches it (one decision for all ranks). on_step(): after each optimizer step
    (no values, so no host sync); on_epoch_end(row, loop): after each epoch with its log row (the
    loop's ``best`` is already updated).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train: PairSet,
        val: PairSet,
        *,
        epochs: int = 1,
        steps: int = 0,
        batch_size: int,
        device: torch.device | str,
        generator: torch.Generator,
        seed: int = 0,
        extra_ratio: float = 0.0,
        augment: Augment | None = None,
        loss: str = "dice",
        extra_weight: float = 1.0,
        compile: bool = False,
        precision: str = "fp32",
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        time_budget_s: float | None = None,
        on_step: Callable[[], None] | None = None,
        on_epoch_end: Callable[[dict, TrainLoop], None] | None = None,
    ):
        if steps == 0 and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train) < 1 or len(val) < 1:
            raise ValueError(f"need training and validation pairs, got {len(train)} and {len(val)}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {world_size} ranks")
        is_extra = train.is_extra.cpu()
        self.real_index = torch.nonzero(~is_extra)[:, 0]  # positions of the real / extra pairs in ``train``
        self.extra_index = torch.nonzero(is_extra)[:, 0]
        self.plan = batch_plan(len(self.real_index), len(self.extra_index), batch_size, extra_ratio=extra_ratio,
                               epochs=epochs, steps=steps, world_size=world_size)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_set, self.val_set = train, val
        self.epochs, self.device, self.generator, self.seed = epochs, torch.device(device), generator, seed
        self.batch_size = self.plan.batch_size
        self.rank, self.world_size = rank, world_size
        self.augment, self.loss, self.extra_weight = augment, loss, extra_weight
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=self.memory_format)
        if world_size > 1 and self.device.type == "cuda":  # same parameters, BatchNorm layers swapped in place
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.forward = torch.compile(model) if compile else model
        self.train_forward = self.forward if world_size == 1 else nn.parallel.DistributedDataParallel(
            self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.on_step, self.on_epoch_end = on_step, on_epoch_end
        self.time_budget_s = time_budget_s
        self.train_seconds = 0.0  # wall-clock seconds of the epochs completed (training and validation)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.real_seen = 0  # real-pair presentations so far (all ranks together)
        self.extra_seen = 0  # extra-pair presentations so far
        self.best = {"epoch": 0, "step": 0, "val_mDice": -math.inf, "val_mIoU": -math.inf}

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def real_passes(self) -> float:
        """Passes over the real pairs so far (real presentations / real pairs)."""
        return self.real_seen / len(self.real_index)

    def run(self) -> list[dict]:
        """Train from ``self.step`` to the step budget, or until ``train_seconds`` reaches ``time_budget_s``
        (checked after each epoch, one decision for all ranks); returns the log rows of the epochs run."""
        history = []
        while self.step < self.plan.total_steps and not self.out_of_time():
            row = self.run_epoch()
            history.append(row)
            if self.on_epoch_end is not None:
                self.on_epoch_end(row, self)
        return history

    def out_of_time(self) -> bool:
        """Whether the time budget is spent on any rank (a collective under torchrun: every rank calls it
        at the same point, so no rank takes a step the others do not)."""
        return self.time_budget_s is not None and any_rank(self.train_seconds >= self.time_budget_s)

    def run_epoch(self) -> dict:
        """One epoch of training and validation; returns the epoch's log row."""
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        loss_mean, steps = self.train_epoch()
        seconds = time.perf_counter() - start
        if not math.isfinite(loss_mean):
            raise FloatingPointError(f"training loss is {loss_mean} at epoch {self.epoch + 1}")
        val = self.validate()
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        if val["mDice"] > self.best["val_mDice"]:
            self.best = {"epoch": self.epoch, "step": self.step, "val_mDice": val["mDice"], "val_mIoU": val["mIoU"]}
        return {
            "epoch": self.epoch,
            "step": self.step,
            "loss": loss_mean,
            "val_mIoU": val["mIoU"],
            "val_mDice": val["mDice"],
            "lr": lr,
            "train_seconds": seconds,
            "images_per_s": steps * self.batch_size / seconds,
            "real_seen": self.real_seen,
            "extra_seen": self.extra_seen,
            "real_passes": round(self.real_passes, 4),
            "is_best": self.best["epoch"] == self.epoch,
        }

    def epoch_batches(self) -> torch.Tensor:
        """The global batches (steps, batch_size) of epoch ``self.epoch`` as indices into the training pairs:
        the epoch's full batches, up to the step budget. Stratified rows hold the real pairs first."""
        plan = self.plan
        steps = max(0, min(plan.steps_per_epoch, plan.total_steps - self.step))
        if not plan.stratified:  # one permutation of all pairs per epoch, cut into full batches
            order = torch.randperm(len(self.train_set), generator=self.generator, device=self.generator.device)
            return order[: plan.steps_per_epoch * plan.batch_size].view(plan.steps_per_epoch, plan.batch_size)[:steps]
        # pass ``epoch`` of the real stream; the extra stream continues from the pairs of the steps done
        n_real = len(self.real_index)
        real = index_stream(self.seed, REAL_STREAM, n_real, self.epoch * n_real, steps * plan.real)
        parts = [self.real_index[real].view(steps, plan.real)]
        if plan.extra:
            extra = index_stream(self.seed, EXTRA_STREAM, len(self.extra_index), self.step * plan.extra,
                                 steps * plan.extra)
            parts.append(self.extra_index[extra].view(steps, plan.extra))
        return torch.cat(parts, 1).to(self.device)

    def train_epoch(self) -> tuple[float, int]:
        """The optimizer steps of one epoch; returns (mean batch loss, steps), the epoch's one host sync."""
        self.model.train()
        # 1. this epoch's global batches; this rank's share of each
        batches = self.epoch_batches()
        steps = batches.shape[0]
        is_extra = self.train_set.is_extra[batches.to(self.train_set.is_extra.device)]
        extra_seen = is_extra.sum()
        group_sizes = rank_group_sizes(is_extra, self.world_size).to(self.device)  # Eq. 11 over the global batch
        if self.plan.stratified:
            batches = batches[:, self.rank::self.world_size]
        else:
            per_rank = self.batch_size // self.world_size
            batches = batches[:, self.rank * per_rank:(self.rank + 1) * per_rank]
        loss_sum = torch.zeros((), device=self.device)
        for index, sizes in zip(batches, group_sizes):
            # 2. batch on the device, augmented image and mask together, one optimizer step
            x, y, is_extra = self.train_set.batch(index)
            if self.augment is not None:
                x, y = self.augment(x, y, self.generator)
            with autocast(self.device, self.precision):
                logits = self.train_forward(x.contiguous(memory_format=self.memory_format))
            loss = dasp_loss(logits.float(), y, is_extra, self.extra_weight, self.loss, group_sizes=sizes)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach()
            self.step += 1
            if self.on_step is not None:
                self.on_step()
        extra_seen = int(extra_seen)
        self.extra_seen += extra_seen
        self.real_seen += steps * self.batch_size - extra_seen
        return all_reduce_mean(loss_sum) / max(steps, 1), steps

    def validate(self) -> dict:
        """mIoU and mDice on the val split (means of per-image scores; binary: threshold 0.5 = logit 0;
        K classes: the argmax, scores averaged over the foreground classes, :func:`consistency_scores`)."""
        logits = predict(self.model, self.val_set.images, self.batch_size, self.device, self.precision)
        if logits.shape[1] == 1:
            scores = per_image_scores(logits > 0, self.val_set.masks)
        else:
            scores = consistency_scores(logits, self.val_set.masks)
        iou, dice = torch.stack([scores["iou"].mean(), scores["dice"].mean()]).tolist()
        return {"mIoU": iou, "mDice": dice}

    def state_dict(self) -> dict:
        """Everything --resume needs: weights, optimizer, scheduler, counters, best, generator state."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": self.epoch,
            "step": self.step,
            "real_seen": self.real_seen,
            "extra_seen": self.extra_seen,
            "best": dict(self.best),
            "train_seconds": self.train_seconds,
            "generator": self.generator.get_state(),
            "schedule_unit": "step",  # the scheduler steps once per optimizer step (per epoch before the step budget)
        }

    def load_state_dict(self, state: dict) -> str:
        """Continue from :meth:`state_dict`'s ``state``, also one an older augforge saved; returns a note saying
        what of an old state was rebuilt ("" when nothing was).

        States from before the step budget (no ``schedule_unit``, no presentation counters) stepped the
        scheduler once per epoch: its state means nothing per step, so the schedule is replayed from the
        start to the step reached (the learning rate an uninterrupted run has there), and the counters are
        rebuilt from steps x batch (mixed batches: the extra pairs' expected share).
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), dict(state["best"])
        self.best.setdefault("step", 0)
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.generator.set_state(state["generator"])
        # the per-step schedule and the counters came in together: a state without counters is per epoch
        per_epoch = state.get("schedule_unit", "step" if "real_seen" in state else "epoch") == "epoch"
        notes = []
        if self.scheduler is not None and per_epoch:
            self._replay_schedule(self.step)
            notes.append(f"learning-rate schedule per epoch -> per step (lr {self.optimizer.param_groups[0]['lr']:.3g} "
                         f"at step {self.step})")
        elif self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if "real_seen" in state:
            self.real_seen, self.extra_seen = int(state["real_seen"]), int(state.get("extra_seen", 0))
        else:
            plan, presented = self.plan, self.step * self.plan.batch_size
            self.extra_seen = (self.step * plan.extra if plan.stratified
                               else round(presented * len(self.extra_index) / len(self.train_set)))
            self.real_seen = presented - self.extra_seen
            notes.append(f"presentations counted from step x batch ({self.real_seen} real, {self.extra_seen} extra)")
        return "; ".join(notes)

    def _replay_schedule(self, steps: int) -> None:
        """Set the (freshly built) scheduler and the optimizer's learning rates to where ``steps`` scheduler
        steps from the start take them, as an uninterrupted run does."""
        import warnings

        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler.last_epoch = 0
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no step is skipped here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()
