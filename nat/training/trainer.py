"""Training a static model for a number of epochs or to a deadline: the hand-back's final
recipe, one path for fine-tuning inherited weights, racing candidates and training from
scratch.

A :class:`Trainer` owns one model's whole schedule. Its length is given in epochs, or in
seconds of this model's own training (a stopwatch that runs only inside :meth:`Trainer.train`),
so several trainers can take turns on one machine, as a race does, and each still decays its
learning rate to zero exactly at the end of its own time. The learning rate follows the
schedule's progress (steps done over steps planned, or seconds trained over seconds planned),
not a step count fixed in advance: a machine that runs slower than measured shortens the
schedule instead of overrunning it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ..data import DataSplits, batch_mixing, make_loader
from ..recipes import FinetuneSpec
from .train import autocast, default_device, input_batch, lr_factor

__all__ = ["Trainer", "measure_step_seconds"]

# Depthwise convolutions run about twice as fast on a CPU in channels-last layout.
_LAYOUT = torch.channels_last


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """Trains ``model`` at ``resolution`` px on ``data.train`` with ``recipe`` (SGD with
    Nesterov momentum, warm-up then cosine decay, label smoothing, optional augmentation
    policy, random erasing, MixUp / CutMix, an exponential moving average of the weights and
    distillation from ``teacher``: (a model, its resolution in px)).

    The schedule lasts ``epochs`` epochs, or ``seconds`` seconds of this trainer's own
    training (exactly one of the two). :meth:`train` advances it, in slices if wanted;
    :meth:`finish` returns the final model (the average when the recipe keeps one)."""

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        resolution: int,
        recipe: FinetuneSpec,
        *,
        epochs: float | None = None,
        seconds: float | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: torch.device | None = None,
        teacher: tuple[nn.Module, int] | None = None,
        warmup: float = 0.0,
        name: str = "",
        progress: bool = False,
    ) -> None:
        if (epochs is None) == (seconds is None):
            raise ValueError("give the schedule's length as epochs or as seconds, not both")
        if (epochs is not None and epochs <= 0) or (seconds is not None and seconds <= 0):
            raise ValueError(f"the schedule must be positive, got {epochs or seconds}")
        self.device = device or default_device()
        self.model = model.to(self.device, memory_format=_LAYOUT).train()
        self.resolution, self.recipe, self.name = resolution, recipe, name
        self.total_epochs, self.total_seconds, self.warmup = epochs, seconds, warmup
        self.teacher = teacher
        if teacher is not None:
            teacher[0].to(self.device, memory_format=_LAYOUT).eval()
        self.generator = torch.Generator().manual_seed(seed)  # augmentation draws
        train = data.train
        if hasattr(train, "with_policy"):
            train = train.with_policy(recipe.augment, recipe.erasing)
        self.loader = make_loader(
            train, batch_size, shuffle=True, seed=seed, drop_last=len(train) > batch_size
        )
        self.mixing = batch_mixing(data.num_classes, recipe.mixup, recipe.cutmix)
        self.steps, self.seconds = 0, 0.0
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=recipe.weight_decay,
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda _: lr_factor(self.progress, self.warmup)
        )
        self.average = None
        if recipe.ema_decay > 0:
            self.average = AveragedModel(
                self.model, avg_fn=_ema(recipe.ema_decay), use_buffers=True
            )
        self._batches: Iterator | None = None
        self.bar = tqdm(desc=name or "training", disable=not progress, leave=False, unit="step")

    # -- where the schedule stands ------------------------------------------------------------
    @property
    def epochs(self) -> float:
        """Epochs trained so far (fractional)."""
        return self.steps / len(self.loader)

    @property
    def progress(self) -> float:
        """Fraction of the schedule done, 0..1."""
        if self.total_seconds is not None:
            return min(1.0, self.seconds / self.total_seconds)
        return min(1.0, self.epochs / self.total_epochs)

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    @property
    def seconds_per_epoch(self) -> float:
        """Measured seconds of training per epoch (nan before the first step)."""
        return self.seconds / self.epochs if self.steps else math.nan

    # -- training ---------------------------------------------------------------------------
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is not None:
            batch = next(self._batches, None)
            if batch is not None:
                return batch
        self._batches = iter(self.loader)
        return next(self._batches)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets: torch.Tensor = labels
        if self.mixing is not None:
            images, targets = self.mixing(images, labels)
        images = input_batch(images, self.resolution).to(self.device)
        targets = targets.to(self.device)
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.recipe.label_smoothing)
        if self.teacher is not None and self.recipe.distill_weight > 0:
            teacher, resolution = self.teacher
            with torch.no_grad():
                soft = F.softmax(teacher(input_batch(images, resolution)).float(), dim=1)
            kd = F.kl_div(F.log_softmax(logits.float(), dim=1), soft, reduction="batchmean")
            weight = self.recipe.distill_weight
            loss = weight * kd + (1 - weight) * loss
        return loss

    def step(self) -> float:
        """One batch; returns its loss."""
        start = time.perf_counter()
        with _global_generator(self.generator):
            images, labels = self._next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device):
                loss = self._loss(images, labels)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        _sync(self.device)
        self.steps += 1
        self.seconds += time.perf_counter() - start
        self.schedule.step()  # after the clock: the next step's rate follows this one's time
        self.bar.update()
        return loss.item()

    def train(self, until: float = 1.0, deadline: float | None = None) -> None:
        """Train until the schedule's progress reaches ``until`` (a fraction, 1 = the end), or
        ``time.perf_counter()`` reaches ``deadline`` (a guard for the whole run)."""
        self.model.train()
        while self.progress < until and (deadline is None or time.perf_counter() < deadline):
            loss = self.step()
            self.bar.set_postfix(loss=f"{loss:.3f}", done=f"{self.progress:.0%}")

    # -- results ------------------------------------------------------------------------------
    def evaluation_model(self) -> nn.Module:
        """The weights to score now, in eval mode: the moving average when kept."""
        model = self.average.module if self.average is not None else self.model
        return model.eval()

    def finish(self) -> nn.Module:
        """The trained model (the moving average's weights when kept), on the CPU, eval mode,
        contiguous layout."""
        self.bar.close()
        if self.average is not None:
            self.model.load_state_dict(self.average.module.state_dict())
        return self.model.to("cpu", memory_format=torch.contiguous_format).eval()

    def record(self) -> dict:
        return {
            "name": self.name,
            "epochs": round(self.epochs, 3),
            "seconds": round(self.seconds, 3),
            "seconds_per_epoch": round(self.seconds_per_epoch, 4) if self.steps else None,
        }


def _ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """AveragedModel's averaging rule: an exponential moving average whose decay warms up
    as min(decay, (1 + n) / (10 + n)) after n updates (timm's ModelEmaV3 rule), so a short
    schedule's average follows the weights instead of keeping the first ones."""

    def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        rate = min(decay, (1 + float(n)) / (10 + float(n)))
        return averaged + (current - averaged) * (1 - rate)

    return average


@contextlib.contextmanager
def _global_generator(generator: torch.Generator) -> Iterator[None]:
    """torchvision's transforms draw from torch's global generator: swap this trainer's in,
    so that trainers taking turns (a race) each see their own reproducible draws."""
    saved = torch.get_rng_state()
    torch.set_rng_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(torch.get_rng_state())
        torch.set_rng_state(saved)


def measure_step_seconds(
    model: nn.Module,
    data: DataSplits,
    resolution: int,
    batch_size: int,
    device: torch.device | None = None,
    steps: int = 3,
) -> float:
    """Median seconds of one training step of a copy of ``model`` at ``batch_size`` images of
    ``resolution`` px, after one warm-up step; the model itself is not changed. A step is what
    :class:`Trainer` does for one batch: draw it (with crop and flip), forward, backward and
    an SGD update. Without the drawing and the update, the steps of a 286k ResNet subnet on
    CIFAR-10 timed 7.2-7.7 s an epoch where training took 8.6 (docs/benchmarks.md, section 7)."""
    device = device or default_device()
    trial = copy.deepcopy(model).to(device, memory_format=_LAYOUT).train()
    optimizer = torch.optim.SGD(trial.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    loader = make_loader(data.train, batch_size, shuffle=True, seed=0)
    times = []
    batches = iter(loader)
    for _ in range(steps + 1):
        start = time.perf_counter()
        images, labels = next(batches, None) or next(iter(loader))
        with autocast(device):
            loss = F.cross_entropy(
                trial(input_batch(images, resolution).to(device)), labels.to(device)
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]
