"""The training recipes of a run, as plain data: supernet pre-training (:class:`TrainConfig`),
the hand-back's training (:class:`FinetuneSpec`) and the run's time budget
(:class:`PlanSpec`). Part of :class:`nat.spec.RunSpec`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .fields import MAX_COUNT, OptionError, at_least, option_help, within

__all__ = ["AUGMENT_POLICIES", "PLAN_STRATEGIES", "FinetuneSpec", "PlanSpec", "TrainConfig"]

# Augmentation policies beside crop and flip (nat.data applies them with transforms.v2).
AUGMENT_POLICIES = ("none", "trivial", "randaugment", "autoaugment")
# How a time-limited run spends its time (nat.planner.plan_run): "search" trains a supernet
# and searches it before the final training, "heuristic" trains the Feillet heuristic's
# subnets from scratch for all of it, "auto" searches only when the model at the budget
# still gets its final_epochs afterwards.
PLAN_STRATEGIES = ("auto", "search", "heuristic")


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training (sandwich rule, in-place distillation). ``lr`` is the peak learning
    rate of SGD with Nesterov momentum: linear warm-up, then cosine decay to 0."""

    # Three epochs: the hand-back fine-tunes what they start, and more would not leave it its
    # time in a 30-minute run (docs/benchmarks.md, section 7).
    epochs: int = field(default=3, metadata=option_help("training epochs"))
    # Twice the steps of batch 64 for the same time on a CPU, which short schedules need.
    batch_size: int = field(default=32, metadata=option_help("images per batch"))
    lr: float = field(default=0.1, metadata=option_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=option_help("SGD momentum"))
    weight_decay: float = field(
        default=4e-5, metadata=option_help("weight decay (not on BatchNorm)")
    )
    warmup_epochs: float = field(default=0.5, metadata=option_help("epochs of linear lr warm-up"))
    random_subnets: int = field(
        default=2, metadata=option_help("random subnets per step besides the largest and smallest")
    )
    distill_temperature: float = field(
        default=1.0, metadata=option_help("softmax temperature of in-place distillation")
    )
    # OFA's pure distillation (1.0) starves short schedules (docs/benchmarks.md).
    distill_weight: float = field(
        default=0.5,
        metadata=option_help(
            "weight of distillation from the teacher subnet in the other subnets' loss, the "
            "rest on the labels; 1 is OFA's pure distillation"
        ),
    )
    label_smoothing: float = field(default=0.1, metadata=option_help("label smoothing of the CE"))
    zero_init_residual: bool = field(
        default=True,
        metadata=option_help(
            "start every residual block as the identity (BigNAS: last BatchNorm of the branch "
            "at zero) when the supernet is built"
        ),
    )
    teacher_multiple: float = field(
        default=2.0,
        metadata=option_help(
            "with a budget, the teacher is the space's largest subnet shrunk until it fits "
            "this multiple of it (0: the space's largest)"
        ),
    )
    # The largest within the budget, not the space's smallest: with the smallest as anchor,
    # inherited accuracy fell with size at 300k (docs/benchmarks.md, section 7).
    anchor_multiple: float = field(
        default=1.0,
        metadata=option_help(
            "with a budget, the subnet trained on every step beside the teacher is the "
            "largest within this multiple of it (0: the space's smallest, BigNAS's sandwich)"
        ),
    )
    # Off: it helped at 1M but pulled the front down to the smallest subnets at 300k and on
    # digits, and cost the 300k run its time (docs/benchmarks.md, section 7).
    smallest_anchor: bool = field(
        default=False,
        metadata=option_help(
            "when the anchor is not the space's smallest subnet, train the smallest on every "
            "step too, in place of one random subnet (same cost per step): BigNAS's sandwich "
            "beside the budget's anchor"
        ),
    )
    sample_multiple: float = field(
        default=1.0,
        metadata=option_help(
            "with a budget, random subnets are drawn among those within this multiple of it, "
            "uniformly in size (0: uniformly over the whole space)"
        ),
    )
    progressive_shrinking: bool = field(
        default=False,
        metadata=option_help(
            "OFA's progressive shrinking in one schedule: the teacher alone for the first "
            "quarter of the steps, then kernel, then depth, then width and expand ratio "
            "(hidden channels sorted by importance first) elastic, a quarter each"
        ),
    )
    seed: int = field(default=0, metadata=option_help("seed of sampling and augmentation"))

    def __post_init__(self) -> None:
        at_least(self, 0, "epochs", "random_subnets", "warmup_epochs", "weight_decay")
        for name in ("teacher_multiple", "anchor_multiple", "sample_multiple"):
            value = getattr(self, name)
            if not (value == 0 or value >= 1):
                raise OptionError(name, f"must be 0 (off) or at least 1, got {value}")
        within(self, 1, MAX_COUNT, "batch_size")
        for name in ("lr", "distill_temperature"):
            if not getattr(self, name) > 0:
                raise OptionError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("distill_weight", "label_smoothing", "momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise OptionError(name, f"must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class FinetuneSpec:
    """What ``nat search`` hands back: ``front_size`` trained models spread over the budget
    (the front's best at about 1/4, 1/2 and all of it by default), the one at the full budget
    chosen by a race of the front's best candidates and the Feillet heuristic's subnet
    (successive halving at equal training time, :mod:`nat.race`), each trained from its
    inherited weights with this recipe."""

    # Without a time limit: enough epochs for inherited weights to settle at 300k on CIFAR-10
    # (docs/benchmarks.md, section 7); with one, the plan sets the training time instead.
    epochs: int = field(
        default=18,
        metadata=option_help(
            "epochs of training for each handed-back model (with --time-limit: planned); 0 "
            "exports inherited weights"
        ),
    )
    front_size: int = field(
        default=3,
        metadata=option_help(
            "trained models handed back, spread over the budget: the front's best at "
            "1/2^(K-1), ..., 1/2 and all of it"
        ),
    )
    race_size: int = field(
        default=4,
        metadata=option_help(
            "candidates raced for the model at the full budget: the heuristic's subnet and "
            "the front's most accurate (1: no race, the heuristic's subnet)"
        ),
    )
    # The peer's from-scratch recipe on labels only: inherited weights are a start, not a
    # finished model, and a fine-tuning rate of 0.01 left them where they were
    # (docs/benchmarks.md, section 7).
    lr: float = field(default=0.1, metadata=option_help("peak learning rate of fine-tuning"))
    weight_decay: float = field(default=5e-4, metadata=option_help("weight decay of fine-tuning"))
    # The recipe's parts below measured no better than flip and crop alone over the epochs a
    # handed-back model gets (the ablation in docs/benchmarks.md, section 7): available, off.
    label_smoothing: float = field(
        default=0.0, metadata=option_help("label smoothing of the cross-entropy")
    )
    ema_decay: float = field(
        default=0.0,
        metadata=option_help(
            "decay per step of the weights' exponential moving average, which is what is "
            "handed back (0: the last weights)"
        ),
    )
    augment: str = field(
        default="none",
        metadata=option_help(
            "augmentation policy beside crop and flip (torchvision.transforms.v2)",
            choices=AUGMENT_POLICIES,
        ),
    )
    erasing: float = field(
        default=0.0, metadata=option_help("probability of random erasing (0: off)")
    )
    mixup: float = field(default=0.0, metadata=option_help("MixUp's alpha (0: off)"))
    cutmix: float = field(default=0.0, metadata=option_help("CutMix's alpha (0: off)"))
    distill_weight: float = field(
        default=0.0,
        metadata=option_help(
            "weight of distillation from the supernet's teacher subnet, the rest on the "
            "labels (0: labels only, as a teacher from a short pre-training is weak)"
        ),
    )
    onnx: bool = field(
        default=True,
        metadata=option_help(
            "also export each handed-back model as model.onnx, checked with onnxruntime"
        ),
    )

    def __post_init__(self) -> None:
        at_least(self, 0, "epochs", "erasing", "mixup", "cutmix", "ema_decay")
        at_least(self, 1, "front_size", "race_size")
        if self.augment not in AUGMENT_POLICIES:
            raise OptionError("augment", f"choose one of {list(AUGMENT_POLICIES)}")
        if not self.lr > 0:
            raise OptionError("lr", f"must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise OptionError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("distill_weight", "label_smoothing", "erasing"):
            if not 0 <= getattr(self, name) <= 1:
                raise OptionError(name, f"must be in [0, 1], got {getattr(self, name)}")
        if not self.ema_decay < 1:
            raise OptionError("ema_decay", f"must be below 1, got {self.ema_decay}")


@dataclass(frozen=True)
class PlanSpec:
    """A wall-clock budget for the whole run (:mod:`nat.planner`). With ``time_limit`` the
    pre-training, the search's iterations and the final training are sized from step times
    measured at the start; without it, the epoch counts and iterations hold."""

    time_limit: float | None = field(
        default=None,
        metadata=option_help(
            "wall-clock limit of the whole run, from data loading to the last export, e.g. "
            "30m, 2h, 1h30m, 900s (default: none; epoch counts hold)",
            unit="s",
        ),
    )
    pretrain_share: float = field(
        default=0.3,
        metadata=option_help("with --time-limit, the share of the time for supernet pre-training"),
    )
    search_share: float = field(
        default=0.15,
        metadata=option_help(
            "with --time-limit, the share of the time for the search; the rest, for the "
            "race and final training"
        ),
    )
    strategy: str = field(
        default="auto",
        metadata=option_help(
            "with --time-limit: 'search' (supernet, search, then final training), 'heuristic' "
            "(the Feillet heuristic's subnets trained from scratch for all the time) or "
            "'auto' (search only when the model at the budget still gets --final-epochs)",
            choices=PLAN_STRATEGIES,
        ),
    )
    # Where a from-scratch model's accuracy levels off on CIFAR-10 at 300k, and below which a
    # search that shortens its training costs more than it finds (docs/benchmarks.md, §7).
    final_epochs: float = field(
        default=60.0,
        metadata=option_help(
            "with --time-limit and --strategy auto, the epochs the model at the budget must "
            "still get after a search, by its measured epoch time; with fewer, the run trains "
            "the heuristic's subnets instead"
        ),
    )

    def __post_init__(self) -> None:
        if self.strategy not in PLAN_STRATEGIES:
            raise OptionError("strategy", f"choose one of {list(PLAN_STRATEGIES)}")
        if not (math.isfinite(self.final_epochs) and self.final_epochs >= 0):
            raise OptionError("final_epochs", f"must be >= 0, got {self.final_epochs}")
        if self.time_limit is not None and not (
            math.isfinite(self.time_limit) and self.time_limit > 0
        ):
            raise OptionError("time_limit", f"must be a positive duration, got {self.time_limit}")
        for name in ("pretrain_share", "search_share"):
            if not 0 <= getattr(self, name) < 1:
                raise OptionError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.pretrain_share + self.search_share > 0.9:
            raise OptionError(
                "search_share",
                f"with pretrain_share it must leave at least 0.1 for final training, got "
                f"{self.pretrain_share} + {self.search_share}",
            )


@dataclass(frozen=True)
class CompareDefaults:
    """The defaults of ``nat compare`` (:func:`nat.compare.compare` and its flags): seeds to
    average over, fine-tuning epochs (0: inherited weights) and learning rate, the metric the
    budgets bound, BatchNorm recalibration batches, and the methods compared."""

    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_epochs: int = 1
    lr: float = 0.01
    metric: str = "params"
    bn_batches: int = 20
    methods: tuple[str, ...] = ("heuristic", "width-only", "depth-only", "searched")


COMPARE = CompareDefaults()


@dataclass(frozen=True)
class MultiExitDefaults:
    """The defaults of ``nat multi-exit`` (:func:`nat.multiexit.judge_multi_exit` and its
    flags): training epochs and peak learning rate of the exits, expected-MACs targets on
    the accuracy curve, and the training seed."""

    epochs: int = 5
    lr: float = 0.05
    points: int = 12
    seed: int = 0


MULTI_EXIT = MultiExitDefaults()
