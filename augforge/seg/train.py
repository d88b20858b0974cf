"""The segmentation training loop (DASP §2.4, Eq. 11) and batched prediction; no file I/O.

:class:`TrainLoop` follows improved-diffusion's ``TrainLoop``: it is handed built objects (model,
optimizer, scheduler, in-memory :class:`~augforge.data.dataset.PairSet` splits, an augmentation,
the loss settings, a device and a seeded generator), runs epochs, and reports through callbacks;
the stage owns files (weights, ``train_state.pt``, ``metrics.jsonl``). One epoch:

1. a permutation of the training pairs is drawn with ``generator`` and cut into full batches
   (``drop_last``: a last batch of size 1 would crash BatchNorm layers that pool to 1x1, e.g.
   DeepLabv3+'s ASPP image pooling);
2. each batch (uint8 on the device -> [0, 1] floats) is augmented on the device, image and mask
   together, then one Adam step on the DASP loss (Eq. 11, per-image soft Dice averaged separately
   over real and extra pairs); losses are summed on the device, so the host syncs once per epoch;
3. the scheduler steps (per epoch), the val split is predicted and scored (mean per-image
   IoU/Dice at threshold 0.5), and the best-val-mDice epoch is tracked.

Under torchrun (``world_size`` > 1) the network is wrapped in DistributedDataParallel: every rank
draws the same permutation (the generator is seeded alike on all ranks) and takes its own
``batch_size / world_size`` slice of each global batch, so an epoch covers the data once whatever
the number of ranks, and the step count, the generator state and hence ``train_state.pt`` mean the
same for any N (resume with another N works). Gradients are averaged by DDP; BatchNorm statistics
are synchronised on CUDA (SyncBatchNorm) and per rank on the CPU (gloo). Every rank validates the
whole (small) val split, so all ranks agree on the best epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from augforge.data.dataset import PairSet
from augforge.runtime import all_reduce_mean, autocast
from augforge.seg.losses import dasp_loss
from augforge.seg.metrics import per_image_scores

Augment = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Logits (N, 1, H, W) float32 on ``device`` for images (N, 3, H, W) in [0, 1].

    ``images`` may also be uint8 in [0, 255] (a :class:`PairSet`'s storage): each batch is then
    converted to [0, 1] on the device, so a whole split never exists as floats. The model is run
    in eval mode (its previous mode is restored) under bf16 autocast on CUDA.
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
        with autocast(device):
            out.append(model(x).float())
    model.train(was_training)
    return torch.cat(out)


class TrainLoop:
    """Epoch-based segmentation training (see the module docstring for the steps).

    model: images (B, 3, H, W) in [0, 1] -> logits (B, 1, H, W). train/val: PairSets, already on
    ``device``. augment: ``aug(x, y, generator) -> (x, y)`` (e.g. ``seg.augment.parse_augs``).
    loss: "dice" | "dice+bce"; extra_weight: the weight of the extra-pair mean in Eq. 11.
    generator: on ``device``; draws the batch order and the augmentations (its state is part of
    :meth:`state_dict`, so a resumed run repeats the uninterrupted one). compile: run the
    forward pass through ``torch.compile`` (the weights stay those of ``model``). rank/world_size:
    this process's place under torchrun (the process group must be initialised when world_size > 1).
    channels_last: NHWC memory format for the network and its inputs (faster convolutions on GPUs).
    on_step(): after each optimizer step (no values, so no host sync); on_epoch_end(row, loop):
    after each epoch with its log row (the loop's ``best`` is already updated).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train: PairSet,
        val: PairSet,
        *,
        epochs: int,
        batch_size: int,
        device: torch.device | str,
        generator: torch.Generator,
        augment: Augment | None = None,
        loss: str = "dice",
        extra_weight: float = 1.0,
        compile: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        time_budget_s: float | None = None,
        on_step: Callable[[], None] | None = None,
        on_epoch_end: Callable[[dict, TrainLoop], None] | None = None,
    ):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train) < 1 or len(val) < 1:
            raise ValueError(f"need training and validation pairs, got {len(train)} and {len(val)}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {world_size} ranks")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_set, self.val_set = train, val
        self.epochs, self.device, self.generator = epochs, torch.device(device), generator
        self.batch_size = min(batch_size, len(train) - len(train) % world_size)
        self.rank, self.world_size = rank, world_size
        self.augment, self.loss, self.extra_weight = augment, loss, extra_weight
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
        self.best = {"epoch": 0, "val_mDice": -math.inf, "val_mIoU": -math.inf}

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train_set) // self.batch_size

    def run(self) -> list[dict]:
        """Train from ``self.epoch`` to ``epochs``, or until ``train_seconds`` reaches ``time_budget_s``
        (checked after each epoch); returns the log rows of the epochs run."""
        history = []
        while self.epoch < self.epochs and not self.out_of_time:
            row = self.run_epoch()
            history.append(row)
            if self.on_epoch_end is not None:
                self.on_epoch_end(row, self)
        return history

    @property
    def out_of_time(self) -> bool:
        return self.time_budget_s is not None and self.train_seconds >= self.time_budget_s

    def run_epoch(self) -> dict:
        """One epoch of training, the scheduler step and validation; returns the epoch's log row."""
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        loss_mean = self.train_epoch()
        seconds = time.perf_counter() - start
        if not math.isfinite(loss_mean):
            raise FloatingPointError(f"training loss is {loss_mean} at epoch {self.epoch + 1}")
        if self.scheduler is not None:
            self.scheduler.step()
        val = self.validate()
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        if val["mDice"] > self.best["val_mDice"]:
            self.best = {"epoch": self.epoch, "val_mDice": val["mDice"], "val_mIoU": val["mIoU"]}
        return {
            "epoch": self.epoch,
            "step": self.step,
            "loss": loss_mean,
            "val_mIoU": val["mIoU"],
            "val_mDice": val["mDice"],
            "lr": lr,
            "train_seconds": seconds,
            "images_per_s": self.batches_per_epoch * self.batch_size / seconds,
            "is_best": self.best["epoch"] == self.epoch,
        }

    def train_epoch(self) -> float:
        """Steps 1-2 of the module docstring; returns the mean batch loss (the epoch's one host sync)."""
        self.model.train()
        # 1. seeded batch order, full batches only; this rank's slice of each global batch
        order = torch.randperm(len(self.train_set), generator=self.generator, device=self.generator.device)
        batches = order[: self.batches_per_epoch * self.batch_size].view(self.batches_per_epoch, self.batch_size)
        per_rank = self.batch_size // self.world_size
        batches = batches[:, self.rank * per_rank:(self.rank + 1) * per_rank]
        loss_sum = torch.zeros((), device=self.device)
        for index in batches:
            # 2. batch on the device, augmented image and mask together, one optimizer step
            x, y, is_extra = self.train_set.batch(index)
            if self.augment is not None:
                x, y = self.augment(x, y, self.generator)
            with autocast(self.device):
                logits = self.train_forward(x.contiguous(memory_format=self.memory_format))
            loss = dasp_loss(logits.float(), y, is_extra, self.extra_weight, self.loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach()
            self.step += 1
            if self.on_step is not None:
                self.on_step()
        return all_reduce_mean(loss_sum) / self.batches_per_epoch

    def validate(self) -> dict:
        """mIoU and mDice on the val split (means of per-image scores, threshold 0.5 = logit 0)."""
        logits = predict(self.forward, self.val_set.images, self.batch_size, self.device)
        scores = per_image_scores(logits > 0, self.val_set.masks)
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
            "best": dict(self.best),
            "train_seconds": self.train_seconds,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), dict(state["best"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.generator.set_state(state["generator"])
