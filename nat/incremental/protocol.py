"""Memoryless class-incremental learning: LUCIR (Hou et al., CVPR 2019) without exemplars, as
Feillet et al. ran it to find their scaling rule.

Classes arrive in states: ``initial`` classes first, then ``increment`` per state. No image of
a past class is kept. The network ends in a cosine classifier; each later state distils the
features of the previous state's frozen model, imprints the new classes' weights and freezes
the old ones. Accuracy after each state counts the classes seen so far.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from supernets import StaticNet

from ..data import DataSplits, class_numbers, make_loader
from ..training.train import default_device, input_batch

__all__ = [
    "CILConfig",
    "CosineClassifier",
    "IncrementalNet",
    "Scenario",
    "distill_weight",
    "imprint",
    "run_protocol",
]


@dataclass(frozen=True)
class Scenario:
    """``initial`` classes in state 0, then ``increment`` new classes in each of the other
    ``states - 1`` states. ``order``: the classes (label numbers) in order of arrival; by
    default a permutation of all classes drawn with ``order_seed``."""

    num_classes: int
    initial: int = 2
    increment: int = 2
    states: int = 5
    order_seed: int = 0
    order: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        for name, low in (("initial", 1), ("increment", 1), ("states", 1)):
            if getattr(self, name) < low:
                raise ValueError(
                    f"{name} must be at least {low}, got {getattr(self, name)}"
                    + (": every later state brings new classes" if name == "increment" else "")
                )
        needed = self.initial + self.increment * (self.states - 1)
        if needed > self.num_classes:
            raise ValueError(
                f"the scenario needs {self.initial} + {self.increment} x {self.states - 1} = "
                f"{needed} classes and the data has {self.num_classes}: lower --initial, "
                "--increment or --states"
            )
        order = self.order or tuple(
            int(c) for c in np.random.default_rng(self.order_seed).permutation(self.num_classes)
        )
        if len(order) < needed or len(set(order)) != len(order):
            raise ValueError(f"order must list {needed} distinct classes, got {list(order)}")
        if not all(0 <= c < self.num_classes for c in order):
            raise ValueError(f"order has a class outside 0..{self.num_classes - 1}: {order}")
        object.__setattr__(self, "order", tuple(order[:needed]))

    @classmethod
    def named(cls, class_names: Sequence[str], order: Sequence[str], **kwargs) -> Scenario:
        """A scenario whose classes arrive in ``order`` (names or numbers of ``class_names``)."""
        numbers = tuple(class_numbers(class_names, order))
        return cls(len(class_names), order=numbers, **kwargs)

    def new_classes(self, state: int) -> range:
        """Positions in :attr:`order` of the classes that ``state`` brings."""
        if state == 0:
            return range(self.initial)
        start = self.initial + (state - 1) * self.increment
        return range(start, start + self.increment)

    def seen(self, state: int) -> int:
        """How many classes have arrived by the end of ``state``."""
        return self.new_classes(state).stop


@dataclass(frozen=True)
class CILConfig:
    """Training of each state: SGD (momentum 0.9), lr divided by 10 at 4/7 and 6/7 of the
    epochs (LUCIR's 70 epochs with steps at 40 and 60), batch ``batch_size``."""

    first_epochs: int = 12
    later_epochs: int = 8
    lr: float = 0.1
    weight_decay: float = 1e-4  # Feillet et al.'s scaling experiments
    batch_size: int = 64
    lambda_base: float = 5.0  # Hou et al.'s value for CIFAR
    seed: int = 0

    def __post_init__(self) -> None:
        if self.first_epochs < 1 or self.later_epochs < 1:
            raise ValueError("first_epochs and later_epochs must be at least 1")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.lambda_base >= 0):
            raise ValueError("lr must be positive, weight_decay and lambda_base at least 0")


class CosineClassifier(nn.Module):
    """logits = σ · cos(f, w_c), no bias; σ learned, starting at 1. The class weights are kept
    in one chunk per state, so that old chunks can be frozen exactly."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        first = torch.empty(num_classes, in_features).uniform_(-bound, bound)
        self.chunks = nn.ParameterList([nn.Parameter(first)])
        self.sigma = nn.Parameter(torch.ones(()))

    @property
    def weight(self) -> torch.Tensor:
        """All class weights ``[classes, features]``, in order of arrival."""
        return torch.cat(list(self.chunks))

    def add_classes(self, weight: torch.Tensor) -> None:
        """Freeze every current class weight and append ``weight`` ``[new, features]``."""
        for chunk in self.chunks:
            chunk.requires_grad_(False)
        self.chunks.append(nn.Parameter(weight.detach().clone().to(self.chunks[0].device)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


class IncrementalNet(nn.Module):
    """A static network's features (last activation removed) under a cosine classifier."""

    def __init__(self, backbone: StaticNet, num_classes: int) -> None:
        super().__init__()
        backbone.drop_last_activation()
        backbone.classifier = nn.Identity()  # its features feed the cosine classifier
        self.backbone = backbone
        self.classifier = CosineClassifier(_feature_size(backbone), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _feature_size(backbone: StaticNet) -> int:
    return backbone.arch.head_channels or backbone.arch.stages[-1].channels


def distill_weight(lambda_base: float, old_classes: int, new_classes: int) -> float:
    """LUCIR's adaptive weight of the feature distillation: λ_base · √(old / new)."""
    return lambda_base * math.sqrt(old_classes / new_classes)


@torch.no_grad()
def imprint(
    model: IncrementalNet, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]
) -> torch.Tensor:
    """Weights for ``classes``: per class, the normalised mean of its images' L2-normalised
    features, scaled to the mean norm of the current class weights. ``[len(classes), D]``."""
    was_training = model.training
    model.eval()  # BatchNorm in eval mode: chunks give what one batch would
    features = torch.cat([F.normalize(model.features(x), dim=1) for x in images.split(256)])
    model.train(was_training)
    labels = labels.to(features.device)
    norm = model.classifier.weight.norm(dim=1).mean()
    rows = []
    for c in classes:
        mine = features[labels == c]
        if len(mine) == 0:
            raise ValueError(f"class {c} has no training image to imprint its weight from")
        rows.append(F.normalize(mine.mean(0), dim=0) * norm)
    return torch.stack(rows)


def _train_state(
    model: IncrementalNet,
    teacher: IncrementalNet | None,
    dataset,
    resolution: int,
    epochs: int,
    weight: float,
    config: CILConfig,
    device: torch.device,
) -> None:
    # A last batch of one image would break BatchNorm in training mode.
    drop_last = len(dataset) % config.batch_size == 1
    loader = make_loader(dataset, config.batch_size, True, config.seed, drop_last=drop_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        trainable, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
    )
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [round(steps * 4 / 7), round(steps * 6 / 7)], gamma=0.1
    )
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = input_batch(images.to(device), resolution), labels.to(device)
            features = model.features(images)
            loss = F.cross_entropy(model.classifier(features), labels)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher.features(images)
                loss = loss + weight * (1 - F.cosine_similarity(features, target, dim=1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def _predict(model: IncrementalNet, dataset, resolution: int, device) -> tuple[np.ndarray, ...]:
    loader = make_loader(dataset, 256, shuffle=False)
    predictions, labels = [], []
    for images, y in loader:
        predictions.append(model(input_batch(images.to(device), resolution)).argmax(1).cpu())
        labels.append(y)
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()


def run_protocol(
    backbone: StaticNet,
    data: DataSplits,
    scenario: Scenario,
    config: CILConfig,
    split: str = "test",
    device: torch.device | None = None,
    on_state: Callable[[int, IncrementalNet], None] | None = None,
) -> dict:
    """Learn ``scenario``'s states in turn with ``backbone`` (its weights are the state-0
    start: fresh for from scratch, or inherited) and score each state on ``split`` over the
    classes seen so far. Returns per state: accuracy (0..1), the accuracy on each state's
    classes, λ; and the mean accuracy over every state but the first, and the forgetting
    (mean over earlier states' classes of best-ever minus final accuracy). ``on_state(t,
    model)`` is called after each state is learnt and scored."""
    if scenario.num_classes != data.num_classes:
        raise ValueError(
            f"the scenario is for {scenario.num_classes} classes, the data has {data.num_classes}"
        )
    device = device or default_device()
    ordered = data.restricted(scenario.order)  # label k: the k-th class to arrive
    resolution = backbone.arch.resolution
    torch.manual_seed(config.seed)
    model = IncrementalNet(backbone, scenario.initial).to(device)
    teacher, states = None, []
    for state in range(scenario.states):
        new = scenario.new_classes(state)
        train = ordered.train.restricted(new, keep_labels=True)
        if set(train.labels.tolist()) != set(new):  # later states see only their classes
            raise AssertionError(f"state {state} would train on other classes")
        weight = 0.0
        if state > 0:
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            ref = ordered.train_eval.restricted(new, keep_labels=True)
            images = input_batch(torch.stack([ref[i][0] for i in range(len(ref))]), resolution)
            model.classifier.add_classes(imprint(model, images.to(device), ref.labels, new))
            weight = distill_weight(config.lambda_base, new.start, len(new))
        epochs = config.first_epochs if state == 0 else config.later_epochs
        _train_state(model, teacher, train, resolution, epochs, weight, config, device)
        seen = scenario.seen(state)
        predicted, labels = _predict(
            model,
            getattr(ordered, split).restricted(range(seen), keep_labels=True),
            resolution,
            device,
        )
        per_state = []  # accuracy on the classes of each state so far
        for s in range(state + 1):
            mine = np.isin(labels, list(scenario.new_classes(s)))
            per_state.append(float((predicted[mine] == labels[mine]).mean()))
        states.append(
            {
                "state": state,
                "classes": seen,
                "accuracy": float((predicted == labels).mean()),
                "per_state": per_state,
                "lambda": weight,
            }
        )
        if on_state is not None:
            on_state(state, model)
    return {
        "states": states,
        "mean_incremental": float(np.mean([s["accuracy"] for s in states[1:]]))
        if len(states) > 1
        else states[0]["accuracy"],
        "forgetting": _forgetting(states),
    }


def _forgetting(states: list[dict]) -> float:
    """Mean over the classes of all but the last state of (best accuracy on them after any
    earlier state) minus (accuracy on them at the end); 0 with one state."""
    if len(states) < 2:
        return 0.0
    final = states[-1]["per_state"]
    drops = [
        max(s["per_state"][k] for s in states[k:-1]) - final[k] for k in range(len(states) - 1)
    ]
    return float(np.mean(drops))
