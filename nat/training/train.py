"""Supernet training (sandwich rule, in-place distillation) and subnet evaluation."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from search_spaces import Arch
from supernets import Supernet, recalibrate_bn

from ..data import DataSplits, make_loader, resize_batch
from ..io.checkpoint import load_training_state, save_supernet
from ..spec import TrainConfig

__all__ = [
    "TrainConfig",
    "autocast",
    "default_device",
    "evaluate",
    "evaluate_subnet",
    "finetune",
    "input_batch",
    "lr_factor",
    "measure_pretrain_epoch",
    "resized",
    "train_supernet",
]

# Draws the random subnets of each step; NAT's adaptation passes its own distribution.
ArchSampler = Callable[[np.random.Generator], Arch]


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision where it pays: bfloat16 autocast on a CUDA device that supports it
    (its range is float32's, so no loss scaling is needed); float32 elsewhere, on a CPU too,
    where bfloat16 ran slower than float32 on these machines."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Depthwise convolutions run about twice as fast on a CPU in channels-last layout (the mbv2
# teacher at 32 px: 0.64 -> 0.33 s per batch of 32, fwd+bwd): training and evaluation use it.
_LAYOUT = torch.channels_last


def input_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """``images`` at ``resolution`` px, in the training layout."""
    return resize_batch(images, resolution).contiguous(memory_format=_LAYOUT)


def resized(loader: Iterable, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``loader`` with its images resized to ``resolution`` px (channels-last)."""
    for images, labels in loader:
        yield input_batch(images, resolution), labels


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, resolution: int, device: torch.device | None = None
) -> float:
    """Top-1 accuracy (fraction in 0..1) of ``model`` on ``loader`` at ``resolution`` px."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in resized(loader, resolution):
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluation loader is empty")
    return correct / total


def evaluate_subnet(
    supernet: Supernet,
    arch: Arch,
    bn_loader: Iterable,
    val_loader: Iterable,
    bn_batches: int = 20,
    device: torch.device | None = None,
) -> tuple[float, nn.Module]:
    """Extract ``arch``, recalibrate its BatchNorm on ``bn_batches`` batches of
    ``bn_loader`` (training images, no augmentation) and measure its accuracy on
    ``val_loader``, on ``device`` (default: the CPU). Returns (accuracy in 0..1, the static
    model, on the CPU)."""
    model = supernet.extract(arch).to(device or "cpu", memory_format=_LAYOUT)
    recalibrate_bn(model, resized(bn_loader, arch.resolution), bn_batches)
    accuracy = evaluate(model, val_loader, arch.resolution)
    return accuracy, model.to("cpu", memory_format=torch.contiguous_format)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up to the optimiser's lr over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``; step it after every optimiser step."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps < 1:
        return cosine
    warmup = LinearLR(optimizer, 1 / warmup_steps, 1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def lr_factor(progress: float, warmup: float) -> float:
    """The learning rate's multiple at ``progress`` (0..1) through a schedule: linear warm-up
    over the first ``warmup`` of it, then cosine decay to 0 at 1."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    rest = (progress - warmup) / max(1e-12, 1 - warmup)
    return 0.5 * (1 + math.cos(math.pi * rest))


# OFA's progressive shrinking compressed into one schedule: (share of the steps done, the
# groups of variables elastic from then on). Resolution is elastic throughout, as in OFA.
SHRINKING_PHASES = (
    (0.0, ("resolution",)),
    (0.25, ("resolution", "kernel")),
    (0.5, ("resolution", "kernel", "depth")),
    (0.75, ("resolution", "kernel", "depth", "width", "expand")),
)


def shrinking_phase(step: int, total_steps: int) -> tuple[int, tuple[str, ...]]:
    """(first step of the phase, elastic groups) of progressive shrinking at ``step``."""
    starts = [round(share * total_steps) for share, _ in SHRINKING_PHASES]
    phase = max(i for i, start in enumerate(starts) if start <= step)
    return starts[phase], SHRINKING_PHASES[phase][1]


def _follow(optimizer: torch.optim.Optimizer, moved: list) -> None:
    """Reorder the optimiser's per-parameter state (momentum) as its parameters were."""
    for tensor, dim, order in moved:
        for value in optimizer.state.get(tensor, {}).values():
            if torch.is_tensor(value) and value.shape == tensor.shape:
                value.copy_(value.index_select(dim, order))


def train_supernet(
    supernet: Supernet,
    data: DataSplits,
    config: TrainConfig,
    sampler: ArchSampler | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_metadata: dict | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    before_step: Callable[[Supernet], None] | None = None,
    resume: bool = False,
    teacher: Arch | None = None,
    anchor: Arch | None = None,
    seconds: float | None = None,
    shard: tuple[int, int] = (0, 1),
    after_epoch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train with the sandwich rule: each step back-propagates the ``teacher`` subnet
    (default: the space's largest) on the labels, then the ``anchor`` (default: the space's
    smallest; with ``config.smallest_anchor`` the smallest too, in place of one random subnet)
    and ``config.random_subnets`` sampled subnets on a mix of the teacher's
    softened predictions (in-place distillation) and the labels, weighted by
    ``config.distill_weight``; one optimiser step per batch.

    With ``config.progressive_shrinking`` the anchor and the random subnets are first
    restricted to the teacher's shape in the groups not yet elastic (:data:`SHRINKING_PHASES`;
    subnets equal to the teacher are skipped), and MBConv's hidden channels are sorted by
    importance when width turns elastic.
    ``sampler`` draws the random subnets (default: uniform over the space);
    :meth:`nat.engine.problem.Budgets.teacher`, ``.anchor`` and ``.sampler`` fit all three to
    a budget. After every epoch the checkpoint (if given) is rewritten atomically, with the
    optimiser's, the schedule's and the random generators' states: with ``resume``, training
    continues from the checkpoint's last epoch and ends with the weights an uninterrupted run
    would have. ``before_step`` sees the gradients before each optimiser step (data-parallel
    training averages them there). ``shard``: (rank, world) of data-parallel training, where
    every process draws the same batches and subnets and trains on its share of each batch
    (``images[rank::world]``): with the gradients averaged and BatchNorm synchronised, that is
    one process's training, whatever the world size. ``after_epoch`` sees the history after
    each epoch, once the checkpoint is written.

    ``seconds``: train for this many seconds instead of ``config.epochs`` epochs (a run's time
    budget): the learning rate follows the time spent (warm-up over ``config.warmup_epochs``
    of the ``config.epochs`` the plan expects, then cosine to 0 at the last second), and the
    last epoch ends early at the limit.
    Returns one record per epoch (loss, seconds, learning rate).
    """
    device = device or default_device()
    rank, world = shard
    if config.batch_size % world:
        raise ValueError(
            f"a batch of {config.batch_size} cannot be shared equally by {world} workers: "
            "choose a batch size that is a multiple of the worker count"
        )
    space = supernet.space
    supernet.to(device, memory_format=_LAYOUT).train()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)  # augmentation draws from torch's global generator
    if sampler is None:

        def sampler(g: np.random.Generator) -> Arch:
            return space.decode(space.sample(1, g)[0])

    teacher, anchor = teacher or space.largest(), anchor or space.smallest()
    anchors = [anchor]
    if config.smallest_anchor and anchor != space.smallest():
        anchors.append(space.smallest())
    draws = max(0, config.random_subnets - (len(anchors) - 1))  # the smallest takes one's place
    teacher_x = space.encode(teacher)
    loader = make_loader(
        data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=len(data.train) > config.batch_size,
    )
    # Transforms of the elastic kernels get no weight decay: they start as the identity.
    decay, no_decay = [], []
    for name, p in supernet.named_parameters():
        (no_decay if p.ndim <= 1 or ".transform." in name else decay).append(p)
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    total_steps = config.epochs * len(loader)
    warmup = min(total_steps, round(config.warmup_epochs * len(loader)))
    history: list[dict] = []
    if seconds is None:
        schedule = warmup_cosine(optimizer, total_steps, warmup)
    else:  # the rate follows the time spent, so the schedule ends at the last second
        warmup_share = min(0.3, config.warmup_epochs / max(1, config.epochs))

        def spent() -> float:
            return sum(r["seconds"] for r in history) + (time.perf_counter() - start)

        start = time.perf_counter()
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: lr_factor(spent() / seconds, warmup_share)
        )
    temperature = config.distill_temperature
    recipe = asdict(config) | ({"seconds": seconds} if seconds is not None else {})
    resumed = load_training_state(checkpoint, recipe) if resume and checkpoint else None
    if resumed is not None:
        try:
            optimizer.load_state_dict(resumed["optimizer"])
        except ValueError:  # saved when multi-kernel layers held one whole weight: start over
            warnings.warn(
                f"{checkpoint} was saved by an older version of the engine whose optimiser "
                "state does not fit this one; pre-training starts from the beginning",
                stacklevel=2,
            )
            resumed = None
    if resumed is not None:
        supernet.load_state_dict(resumed["supernet"])
        schedule.load_state_dict(resumed["schedule"])
        rng.bit_generator.state = resumed["rng"]
        torch.set_rng_state(resumed["torch_rng"])
        loader.generator.set_state(resumed["loader_rng"])
        history = resumed["history"]
    epochs = range(len(history), config.epochs) if seconds is None else count(len(history))
    for epoch in epochs:
        if seconds is not None and sum(r["seconds"] for r in history) >= seconds:
            break
        start, loss_sum, batches = time.perf_counter(), 0.0, 0
        of = f"/{config.epochs}" if seconds is None else f" ({seconds:.0f} s)"
        bar = tqdm(loader, desc=f"epoch {epoch + 1}{of}", disable=not progress, leave=False)
        for batch, (images, labels) in enumerate(bar):
            if seconds is not None and spent() >= seconds:
                break
            step = epoch * len(loader) + batch
            images, labels = images[rank::world].to(device), labels[rank::world].to(device)
            lr = schedule.get_last_lr()[0]
            optimizer.zero_grad(set_to_none=True)
            if config.progressive_shrinking:
                phase_start, elastic = shrinking_phase(step, total_steps)
                if step == phase_start and "width" in elastic:  # before any gradient
                    _follow(optimizer, supernet.sort_channels())
            supernet.set_active(teacher)
            with autocast(device):
                logits = supernet(input_batch(images, teacher.resolution)).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            loss.backward()
            soft_targets = F.softmax(logits.detach() / temperature, dim=1)
            step_loss = loss.item()
            students = anchors + [sampler(rng) for _ in range(draws)]
            if config.progressive_shrinking:
                students = [
                    space.decode(space.restrict(space.encode(a), teacher_x, elastic))
                    for a in students
                ]
                students = [a for a in students if a != teacher]
            for arch in students:
                supernet.set_active(arch)
                with autocast(device):
                    student = supernet(input_batch(images, arch.resolution)).float()
                kd = (
                    F.kl_div(
                        F.log_softmax(student / temperature, dim=1),
                        soft_targets,
                        reduction="batchmean",
                    )
                    * temperature**2
                )
                if config.distill_weight < 1:
                    ce = F.cross_entropy(student, labels, label_smoothing=config.label_smoothing)
                    kd = config.distill_weight * kd + (1 - config.distill_weight) * ce
                kd.backward()
                step_loss += kd.item()
            if before_step is not None:
                before_step(supernet)
            nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            loss_sum += step_loss
            batches += 1
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.4f}")
        supernet.set_active(teacher)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, batches),
            "seconds": time.perf_counter() - start,
            "lr": lr if batches else 0.0,
        }
        history.append(record)
        if checkpoint is not None:
            state = {
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "loader_rng": loader.generator.get_state(),
            }
            save_supernet(
                checkpoint,
                supernet,
                **(checkpoint_metadata or {}),
                train_config=recipe,
                history=history,
                training_state=state,
            )
        if after_epoch is not None:
            after_epoch(history)
    supernet.to(memory_format=torch.contiguous_format)
    return history


class _Measured(Exception):
    """Ends a measuring run of :func:`train_supernet` once its steps are timed."""


def measure_pretrain_epoch(
    supernet: Supernet,
    data: DataSplits,
    config: TrainConfig,
    steps: int = 4,
    **training: Any,
) -> float:
    """Seconds one epoch of :func:`train_supernet` takes with ``config`` (and ``training``:
    sampler, teacher, anchor, device), from the median of ``steps`` timed steps of a copy of
    ``supernet`` after one warm-up step: measured, not guessed from MACs."""
    trial = copy.deepcopy(supernet)
    marks: list[float] = []

    def tick(_: Supernet) -> None:
        marks.append(time.perf_counter())
        if len(marks) > steps + 1:
            raise _Measured

    try:
        train_supernet(trial, data, config, progress=False, before_step=tick, **training)
    except _Measured:
        pass
    gaps = np.diff(marks)
    if not len(gaps):
        raise ValueError("too few training images to time a step: one batch at least")
    batches = max(1, len(data.train) // config.batch_size)
    return float(np.median(gaps)) * batches


def finetune(
    model: nn.Module,
    data: DataSplits,
    resolution: int,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 64,
    weight_decay: float = 4e-5,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
    teacher: tuple[nn.Module, int] | None = None,
    distill_weight: float = 0.5,
    criterion: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    before_epoch: Callable[[int], bool] | None = None,
) -> nn.Module:
    """Train a static model with cross-entropy, SGD (Nesterov) and a cosine schedule over
    ``epochs`` at ``resolution`` px; the same recipe fine-tunes inherited weights and trains
    from scratch, so comparisons are fair. ``teacher``: (a model, its resolution in px) whose
    softened predictions the loss follows with ``distill_weight``, the rest on the labels.
    ``criterion``: the loss of the model's output and the labels instead of cross-entropy
    (e.g. for a model with several outputs). ``before_epoch(epoch)`` runs before each
    epoch; when it returns True it has replaced the model's parameters (pruning), and a new
    optimiser carries on the same cosine schedule. Returns the model, in eval mode."""
    if criterion is not None and teacher is not None:
        raise ValueError("give a teacher or a criterion, not both")
    criterion = criterion or F.cross_entropy
    device = device or default_device()
    torch.manual_seed(seed)
    model.to(device, memory_format=_LAYOUT).train()
    if teacher is not None:
        teacher[0].to(device, memory_format=_LAYOUT).eval()
    loader = make_loader(
        data.train, batch_size, shuffle=True, seed=seed, drop_last=len(data.train) > batch_size
    )

    def sgd() -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )

    optimizer = sgd()
    total = epochs * len(loader)
    schedule = warmup_cosine(optimizer, total)
    for epoch in range(epochs):
        if before_epoch is not None and before_epoch(epoch):
            model.to(device, memory_format=_LAYOUT).train()
            optimizer, done = sgd(), epoch * len(loader)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step, done=done: 0.5 * (1 + math.cos(math.pi * (step + done) / total)),
            )
        for images, labels in tqdm(
            loader, desc=f"fine-tune {epoch + 1}/{epochs}", disable=not progress, leave=False
        ):
            optimizer.zero_grad(set_to_none=True)
            images, labels = images.to(device), labels.to(device)
            logits = model(input_batch(images, resolution))
            loss = criterion(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher[0](input_batch(images, teacher[1])), dim=1)
                kd = F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="batchmean")
                loss = distill_weight * kd + (1 - distill_weight) * loss
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.to(memory_format=torch.contiguous_format).eval()
