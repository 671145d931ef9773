"""The training recipes of a run, as plain data: supernet pre-training (:class:`TrainConfig`)
and the hand-back's fine-tuning (:class:`FinetuneSpec`). Part of :class:`nat.spec.RunSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .fields import OptionError, _at_least, _help

__all__ = ["FinetuneSpec", "TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training (sandwich rule, in-place distillation). ``lr`` is the peak learning
    rate of SGD with Nesterov momentum: linear warm-up, then cosine decay to 0."""

    epochs: int = field(default=10, metadata=_help("training epochs"))
    # Twice the steps of batch 64 for the same time on a CPU: +6 points median on digits.
    batch_size: int = field(default=32, metadata=_help("images per batch"))
    lr: float = field(default=0.1, metadata=_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    weight_decay: float = field(default=4e-5, metadata=_help("weight decay (not on BatchNorm)"))
    warmup_epochs: float = field(default=0.5, metadata=_help("epochs of linear lr warm-up"))
    random_subnets: int = field(
        default=2, metadata=_help("random subnets per step besides the largest and smallest")
    )
    distill_temperature: float = field(
        default=1.0, metadata=_help("softmax temperature of in-place distillation")
    )
    # OFA's pure distillation (1.0) starves short schedules (docs/benchmarks.md).
    distill_weight: float = field(
        default=0.5,
        metadata=_help(
            "weight of distillation from the teacher subnet in the other subnets' loss, the "
            "rest on the labels; 1 is OFA's pure distillation"
        ),
    )
    label_smoothing: float = field(default=0.1, metadata=_help("label smoothing of the CE"))
    zero_init_residual: bool = field(
        default=True,
        metadata=_help(
            "start every residual block as the identity (BigNAS: last BatchNorm of the branch "
            "at zero) when the supernet is built"
        ),
    )
    teacher_multiple: float = field(
        default=2.0,
        metadata=_help(
            "with a budget, the teacher is the space's largest subnet shrunk until it fits "
            "this multiple of it (0: the space's largest)"
        ),
    )
    # On the quality split at 300k (3 epochs) the smallest as anchor left inherited accuracy
    # falling with size (Spearman -0.14 over 19 subnets); the largest within the budget made
    # it rise (+0.32) and the median 1 point higher, for 25 % more pre-training time. At 1M
    # the smallest handed back 75.7 % test against 74.8 % (validation 74.2 against 73.9 %).
    anchor_multiple: float = field(
        default=1.0,
        metadata=_help(
            "with a budget, the subnet trained on every step beside the teacher is the "
            "largest within this multiple of it (0: the space's smallest, BigNAS's sandwich)"
        ),
    )
    # On CIFAR-10 at 1M it lifted the model handed back from 74.8 to 75.4 % (test); at 300k
    # and on digits it pulled the front down to the smallest subnets, and the 300k run over
    # 30 minutes (docs/benchmarks.md).
    smallest_anchor: bool = field(
        default=False,
        metadata=_help(
            "when the anchor is not the space's smallest subnet, train the smallest on every "
            "step too, in place of one random subnet (same cost per step): BigNAS's sandwich "
            "beside the budget's anchor"
        ),
    )
    sample_multiple: float = field(
        default=1.0,
        metadata=_help(
            "with a budget, random subnets are drawn among those within this multiple of it, "
            "uniformly in size (0: uniformly over the whole space)"
        ),
    )
    progressive_shrinking: bool = field(
        default=False,
        metadata=_help(
            "OFA's progressive shrinking in one schedule: the teacher alone for the first "
            "quarter of the steps, then kernel, then depth, then width and expand ratio "
            "(hidden channels sorted by importance first) elastic, a quarter each"
        ),
    )
    seed: int = field(default=0, metadata=_help("seed of sampling and augmentation"))

    def __post_init__(self) -> None:
        _at_least(self, 0, "epochs", "random_subnets", "warmup_epochs", "weight_decay")
        for name in ("teacher_multiple", "anchor_multiple", "sample_multiple"):
            value = getattr(self, name)
            if not (value == 0 or value >= 1):
                raise OptionError(name, f"must be 0 (off) or at least 1, got {value}")
        _at_least(self, 1, "batch_size")
        for name in ("lr", "distill_temperature"):
            if not getattr(self, name) > 0:
                raise OptionError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("distill_weight", "label_smoothing", "momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise OptionError(name, f"must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class FinetuneSpec:
    """What ``nat search`` hands back: the front's most accurate subnets and the Feillet
    heuristic's, fine-tuned from their inherited weights (optionally distilled from the
    supernet's teacher subnet)."""

    # On CIFAR-10 at 300k (docs/benchmarks.md, section 7) the front's 294k subnet reached
    # 68.0 % validation accuracy after 15 epochs from inherited weights and 70.7 % after 18,
    # and the whole run stayed within 30 minutes (1,773 s); the heuristic's subnet 65.5 %
    # after 10 epochs and 69.2 % after 15.
    epochs: int = field(
        default=18,
        metadata=_help(
            "epochs of fine-tuning for the chosen front subnets and the heuristic's subnet; 0 "
            "exports the front with inherited weights"
        ),
    )
    top: int = field(
        default=1, metadata=_help("front subnets to fine-tune, the most accurate first")
    )
    # On CIFAR-10 at 300k, once the front reached the budget (293.7k against the heuristic's
    # 296.3k) the two fine-tuned to 68.0 and 69.2 % validation: a second 6-minute fine-tuning
    # for noise, which took the run past 30 minutes (docs/benchmarks.md, section 7).
    heuristic: str = field(
        default="auto",
        metadata=_help(
            "also fine-tune the Feillet heuristic's subnet at the full budget: always, never, "
            "or auto: when the chosen front subnets all have under 0.9 times its "
            "parameters (the search stopped short of the budget)",
            choices=("auto", "always", "never"),
        ),
    )
    # The peer's from-scratch recipe (lr 0.1, weight decay 5e-4), labels only: on CIFAR-10 at
    # 300k after 4 pre-training epochs it took the chosen subnet from 44.8 % to 63.0 % in 8
    # epochs, where lr 0.01, weight decay 4e-5 and half distillation from the teacher (49 %)
    # reached 48.3 % (docs/benchmarks.md, section 7).
    lr: float = field(default=0.1, metadata=_help("peak learning rate of fine-tuning"))
    weight_decay: float = field(default=5e-4, metadata=_help("weight decay of fine-tuning"))
    distill_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of distillation from the supernet's teacher subnet, the rest on the "
            "labels (0: labels only, as a teacher from a short pre-training is weak)"
        ),
    )
    onnx: bool = field(
        default=True,
        metadata=_help("also export each front subnet as model.onnx, checked with onnxruntime"),
    )

    def __post_init__(self) -> None:
        _at_least(self, 0, "epochs")
        _at_least(self, 1, "top")
        if self.heuristic not in ("auto", "always", "never"):
            raise OptionError("heuristic", f"must be auto, always or never, got {self.heuristic!r}")
        if not self.lr > 0:
            raise OptionError("lr", f"must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise OptionError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0 <= self.distill_weight <= 1:
            raise OptionError("distill_weight", f"must be in [0, 1], got {self.distill_weight}")
