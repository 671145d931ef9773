"""Supernet training (sandwich rule, in-place distillation) and subnet evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from search_spaces import Arch
from supernets import Supernet, recalibrate_bn

from .checkpoint import save_supernet
from .data import DataSplits, make_loader, resize_batch

__all__ = [
    "TrainConfig",
    "default_device",
    "evaluate",
    "evaluate_subnet",
    "finetune",
    "resized",
    "train_supernet",
]

# Draws the random subnets of each step; NAT's adaptation passes its own distribution.
ArchSampler = Callable[[np.random.Generator], Arch]


@dataclass
class TrainConfig:
    """Supernet training settings. ``lr`` is the peak learning rate of SGD with Nesterov
    momentum, decayed by a cosine schedule over all steps after ``warmup_epochs``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 0.5
    random_subnets: int = 2  # per step, besides the largest and the smallest
    distill_temperature: float = 1.0
    # Students' loss: distill_weight * KD from the largest + (1 - distill_weight) * label CE.
    # OFA's pure distillation (1.0) starves short schedules: after 5 epochs on a 4,000-image
    # CIFAR-10 subset it left subnets 7-12 points below 0.5 (scripts/bench.py's setup).
    distill_weight: float = 0.5
    label_smoothing: float = 0.1
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.random_subnets < 0:
            raise ValueError(
                "training needs epochs >= 0, batch_size >= 1, lr > 0, random_subnets >= 0; "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.random_subnets}"
            )
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(
                f"distill_weight must be in [0, 1] (1: distillation only), "
                f"got {self.distill_weight}"
            )


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resized(loader: Iterable, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``loader`` with its images resized to ``resolution`` px."""
    for images, labels in loader:
        yield resize_batch(images, resolution), labels


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
) -> tuple[float, nn.Module]:
    """Extract ``arch``, recalibrate its BatchNorm on ``bn_batches`` batches of
    ``bn_loader`` (training images, no augmentation) and measure its accuracy on
    ``val_loader``. Returns (accuracy in 0..1, the static model)."""
    model = supernet.extract(arch)
    recalibrate_bn(model, resized(bn_loader, arch.resolution), bn_batches)
    return evaluate(model, val_loader, arch.resolution), model


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


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
) -> list[dict]:
    """Train with the sandwich rule: each step back-propagates the largest subnet on the
    labels, then the smallest and ``config.random_subnets`` sampled subnets on a mix of the
    largest one's softened predictions (in-place distillation) and the labels, weighted by
    ``config.distill_weight``; one optimiser step per batch.

    ``sampler`` draws the random subnets (default: uniform over the space). After every
    epoch the checkpoint (if given) is rewritten atomically. ``before_step`` sees the
    gradients before each optimiser step (data-parallel training averages them there).
    Returns one record per epoch (loss, seconds, learning rate).
    """
    device = device or default_device()
    space = supernet.space
    supernet.to(device).train()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)  # augmentation draws from torch's global generator
    if sampler is None:

        def sampler(g: np.random.Generator) -> Arch:
            return space.decode(space.sample(1, g)[0])

    largest, smallest = space.largest(), space.smallest()
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
    temperature = config.distill_temperature
    history, step = [], 0
    for epoch in range(config.epochs):
        start, loss_sum, batches = time.perf_counter(), 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False
        )
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            lr = _lr_at(step, total_steps, warmup, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            supernet.set_active(largest)
            logits = supernet(resize_batch(images, largest.resolution))
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            loss.backward()
            soft_targets = F.softmax(logits.detach() / temperature, dim=1)
            step_loss = loss.item()
            for arch in [smallest] + [sampler(rng) for _ in range(config.random_subnets)]:
                supernet.set_active(arch)
                student = supernet(resize_batch(images, arch.resolution))
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
            step += 1
            loss_sum += step_loss
            batches += 1
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.4f}")
        supernet.set_active(largest)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, batches),
            "seconds": time.perf_counter() - start,
            "lr": lr if batches else 0.0,
        }
        history.append(record)
        if checkpoint is not None:
            save_supernet(
                checkpoint,
                supernet.cpu(),
                **(checkpoint_metadata or {}),
                train_config=asdict(config),
                history=history,
            )
            supernet.to(device)
    return history


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
) -> nn.Module:
    """Train a static model with cross-entropy, SGD (Nesterov) and a cosine schedule over
    ``epochs`` at ``resolution`` px; the same recipe fine-tunes inherited weights and trains
    from scratch, so comparisons are fair. Returns the model, in eval mode."""
    device = device or default_device()
    torch.manual_seed(seed)
    model.to(device).train()
    loader = make_loader(
        data.train, batch_size, shuffle=True, seed=seed, drop_last=len(data.train) > batch_size
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    total, step = max(1, epochs * len(loader)), 0
    for epoch in range(epochs):
        for images, labels in tqdm(
            loader, desc=f"fine-tune {epoch + 1}/{epochs}", disable=not progress, leave=False
        ):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, 0, lr)
            optimizer.zero_grad(set_to_none=True)
            logits = model(resize_batch(images.to(device), resolution))
            F.cross_entropy(logits, labels.to(device)).backward()
            optimizer.step()
            step += 1
    return model.eval()
