"""The benchmarks' settings: ``FULL`` (the figures in docs/benchmarks.md) and ``QUICK`` (every
stage as briefly as it runs, for the tests)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on. ``FULL``: under an hour on 2 cores; ``QUICK``: minutes."""

    space: str = "resnet"
    resolutions: tuple[int, ...] = (24, 28, 32)
    width_mults: tuple[float, ...] = (0.125, 0.25, 0.375)
    subset: int = 5000  # images drawn from the dataset: 80 % train, 10 % val, 10 % test
    max_params: float = 1.2e6
    pretrain_epochs: int = 5
    bn_batches: int = 10
    # search
    seeds: tuple[int, ...] = (0, 1, 2)
    iterations: int = 3
    doe_size: int = 12
    candidates: int = 8
    population: int = 40
    generations: int = 20
    real_population: int = 10  # NSGA-II on real evaluations: ~4 generations for ~40 subnets
    heuristic_budgets: int = 8  # budgets per heuristic method, log-spaced up to max_params
    # heuristic vs searched
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    finetune_epochs: int = 2
    finetune_seeds: tuple[int, ...] = (0, 1)
    # ranking fidelity
    fidelity_archs: int = 10
    scratch_epochs: int = 3
    scratch_lr: float = 0.05
    # surrogate quality (a pool of random subnets evaluated with the pre-trained supernet)
    pool_size: int = 140
    holdout: int = 40
    train_sizes: tuple[int, ...] = (10, 20, 40, 70, 100)
    repeats: int = 3
    # speed
    complexity_population: int = 10_000
    profiled_configs: int = 5
    forward_batch: int = 64
    forward_resolution: int = 32
    forward_repeats: int = 15
    train_batch: int = 32
    train_resolution: int = 64
    train_steps: int = 8
    ray_archs: int = 24
    # quality at equal wall time: a split of its own (half train, a quarter each val and
    # test); nat search --time-limit at each budget, the stock peers trained as long
    # ResNet: its subnets train an epoch 2x faster than MBConv's on a CPU at the same params,
    # and the search beat both peers there at 300k (docs/benchmarks.md, section 7)
    quality_space: str = "resnet"
    quality_subset: int = 20_000
    quality_holdout: float = 0.25
    quality_resolution: int = 32
    quality_budgets: tuple[float, ...] = (3e5, 1e6)
    quality_limits: tuple[float, ...] = (1800.0, 3600.0)  # seconds, one per budget
    quality_seeds: tuple[int, ...] = (0, 1, 2)  # of the first budget's search; one elsewhere
    quality_peers: tuple[str, ...] = ("mobilenet_v2",)  # ShuffleNetV2 scored 5 points lower
    quality_curve_fractions: tuple[float, ...] = (1 / 3, 2 / 3)  # of the first limit
    # which peer rows to train for as long as the search: "(c)" stock recipe, "(c')" the
    # engine's (a partial rerun keeps the others' cached rows out of the table)
    quality_peer_kinds: tuple[str, ...] = ("(c)", "(c')")
    quality_epochs: int = 15  # (b): the peers' 15 epochs, which time their epochs
    quality_max_epochs: int = 1000  # cap of (c)
    quality_options: dict = field(default_factory=dict)  # flat run options beyond the defaults
    # cap of the peers trained for as long as a search ran (quality's (c'), transfer's (iii)
    # and (iv), tiny's (b) and (c)); None: as long as the search (quick: the code path only)
    peer_seconds: float | None = None
    # train once, search many (section 13): a source supernet on six CIFAR-10 classes, the
    # other four as the target at 1,000 training images, every target row given the same time
    source_classes: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog")
    source_subset: int | None = 30_000  # of the whole archive: 18,000 source images
    source_epochs: int = 2
    source_budgets: tuple[float, ...] = (3e5,)
    target_classes: tuple[str, ...] = ("frog", "horse", "ship", "truck")
    target_subset: int | None = 5_000  # 2,000 target images: 1,000 train, 500 val, 500 test
    target_limit: float = 300.0  # seconds on the target, every row
    # source training on Ray Train: one epoch of the source classes, timed
    scaling_subset: int | None = 4_000
    scaling_batch: int = 64
    # also time two workers with BatchNorm pooled (a second Ray Train run; test_distributed
    # covers that path, so the quick suite leaves it out)
    scaling_pooled_batch_norm: bool = True
    # ResNet basic blocks, as ResNet-8's: mbv2's narrowest subnet at 32 px needs 57,344 bytes
    # of peak int8 memory, above ResNet-8's 49,152 (its expanded first block at full size)
    tiny_space: str = "resnet"
    tiny_footprint_subnets: int = 30  # random subnets a family, analytic against measured
    tiny_limit: float | None = 900.0  # seconds: the search's time limit (None: epochs)
    tiny_options: dict = field(default_factory=dict)  # flat run options of the search
    tiny_budget_multiple: float = 1.0  # of ResNet-8's flash and SRAM (quick: 16-px images)
    # the final recipe's ablation: one subnet trained from inherited weights per variant
    recipe_epochs: float = 20.0
    recipe_variants: dict = field(
        default_factory=lambda: {
            "flip and crop (the defaults)": {},
            "+ label smoothing 0.1": {"finetune_label_smoothing": 0.1},
            "+ EMA of the weights (decay 0.998)": {"ema_decay": 0.998},
            "+ TrivialAugmentWide": {"augment": "trivial"},
            "+ random erasing 0.25": {"erasing": 0.25},
            "+ MixUp 0.2 / CutMix 1.0": {"mixup": 0.2, "cutmix": 1.0},
            "+ distillation from the teacher (0.5)": {"finetune_distill_weight": 0.5},
        }
    )
    # class-incremental learning (memoryless LUCIR) at AdvisIL's smaller budgets, where
    # depth-only (full width) fits too; nat search with its defaults on state 0's classes
    cil_space: str = "mbv2"
    cil_budgets: tuple[float, ...] = (1.5e6, 3e6)
    cil_subset: int = 10_000  # of a dataset other than digits: 800 train images per class
    # of a dataset other than digits (32 px): the stride-2 stem makes a protocol run about a
    # minute instead of several; digits' 8 px keep the small stem
    cil_space_options: dict = field(default_factory=lambda: {"stem": "stride2"})
    cil_initial: int = 2
    cil_increment: int = 2
    cil_states: int = 5
    cil_first_epochs: int = 12
    cil_later_epochs: int = 8
    cil_seeds: tuple[int, ...] = (0, 1, 2)
    cil_search_options: dict = field(default_factory=dict)
    # deployment: ONNX export and batch-1 latency of random subnets of every family
    deploy_archs: int = 10
    deploy_repeats: int = 50
    deploy_max_depth: int | None = None  # blocks per stage at most (None: the space's)
    # the latency predictor: random subnets of each family's default space, both runtimes
    latency_archs: int = 30
    latency_rounds: int = 6
    latency_calibration: int = 10  # whole subnets the table is calibrated on
    latency_runtimes: tuple[str, ...] = ("onnxruntime", "torch")
    latency_space_options: dict = field(default_factory=dict)
    latency_dynamo: bool = True  # calibrate on and measure model.onnx itself (slow to export)
    # pruning (torch-pruning) vs searched at fractions of max_params, and in transfer
    pruning_fractions: tuple[float, ...] = (0.25, 0.5)
    pruning_seeds: tuple[int, ...] = (0, 1, 2)
    pruning_importances: tuple[str, ...] = ("l1", "taylor")
    transfer_subset: int | None = None  # digits images for the transfer (None: all 1,797)
    transfer_epochs: int = 5  # at the new-task lr: 2 epochs at 0.01 left every model near 25 %
    # multi-exit: exits on the front's most accurate subnet, one training per seed
    multiexit_seeds: tuple[int, ...] = (0, 1, 2)
    multiexit_epochs: int = 5
    multiexit_points: int = 12
    # cost growth
    archive_sizes: tuple[int, ...] = (20, 40, 80, 120)
    population_sizes: tuple[int, ...] = (20, 40, 80, 160)


FULL = Settings()
# The quick settings' searches: every stage runs, each as briefly as it can.
_TINY_SEARCH = {
    "width_mults": [0.25, 0.5],
    "pretrain_epochs": 1,
    "iterations": 1,
    "doe_size": 4,
    "candidates": 2,
    "population": 8,
    "generations": 2,
    "adapt_epochs": 0,
    "finetune_epochs": 1,
    "front_size": 1,
    "race_size": 1,
    "bn_batches": 2,
    "onnx": False,
}
QUICK = Settings(
    resolutions=(16, 20),
    width_mults=(0.125, 0.25),
    subset=600,
    max_params=4e5,
    pretrain_epochs=4,
    bn_batches=2,
    seeds=(0,),
    iterations=1,
    doe_size=4,
    candidates=3,
    population=12,
    generations=3,
    real_population=4,
    heuristic_budgets=3,
    finetune_epochs=1,
    finetune_seeds=(0,),
    fidelity_archs=4,
    scratch_epochs=2,
    pool_size=30,
    holdout=10,
    train_sizes=(8, 16),
    repeats=1,
    complexity_population=1000,
    profiled_configs=2,
    forward_batch=8,
    forward_resolution=16,
    forward_repeats=2,
    train_batch=8,
    train_resolution=32,
    train_steps=2,
    ray_archs=4,
    archive_sizes=(8, 16),
    population_sizes=(8, 16),
    quality_space="mbv2",  # the quick widths (0.25, 0.5) put every ResNet subnet over 300k
    quality_subset=600,
    quality_resolution=16,
    quality_budgets=(3e5,),
    quality_limits=(40.0,),  # 25 s left no time to train on a slow day: 16 s go to exports
    quality_seeds=(0,),
    quality_curve_fractions=(),
    quality_epochs=1,
    quality_max_epochs=2,
    # "search": the quick run checks the search's path; in 40 s "auto" would skip it (the
    # heuristic's path has its own test, tests/test_time_limit.py)
    quality_options={
        "width_mults": [0.25, 0.5],
        "onnx": False,
        "bn_batches": 2,
        "strategy": "search",
    },
    recipe_epochs=1.0,
    recipe_variants={"flip and crop (the defaults)": {}, "+ EMA": {"ema_decay": 0.99}},
    cil_budgets=(3e5,),
    cil_first_epochs=1,
    cil_later_epochs=1,
    cil_states=3,
    cil_seeds=(0,),
    cil_search_options=_TINY_SEARCH,
    deploy_archs=1,
    deploy_repeats=3,
    deploy_max_depth=1,
    latency_archs=3,
    latency_rounds=2,
    latency_calibration=2,
    latency_runtimes=("onnxruntime",),
    latency_space_options={"resolutions": [16], "width_mults": [0.25], "kernel_sizes": [3]},
    latency_dynamo=False,
    pruning_fractions=(0.5,),
    pruning_seeds=(0,),
    pruning_importances=("taylor",),  # L1 runs in the tests
    transfer_subset=300,
    transfer_epochs=1,
    source_classes=("0", "1", "2", "3", "4", "5"),
    source_subset=None,
    source_epochs=1,
    target_classes=("6", "7", "8", "9"),
    target_subset=None,
    target_limit=24.0,
    scaling_subset=400,
    scaling_batch=32,
    scaling_pooled_batch_norm=False,
    tiny_footprint_subnets=1,
    tiny_limit=None,
    tiny_options={k: v for k, v in _TINY_SEARCH.items() if k not in ("width_mults", "onnx")},
    peer_seconds=5.0,
    tiny_budget_multiple=3.0,
    multiexit_seeds=(0,),
    multiexit_epochs=1,
    multiexit_points=4,
)
