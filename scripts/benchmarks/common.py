"""What every benchmark shares: the settings (FULL, QUICK), the :class:`Bench` with its
caches (data, the pre-trained supernet, seed-by-seed NAT runs, a pool of evaluated random
subnets), the machine record, and the one renderer of results (markdown, JSON, plots)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import supernets
from nat.data import DataSplits
from nat.engine.archive import Archive
from nat.engine.loop import SearchResult, sample_feasible
from nat.engine.problem import Budgets
from nat.io.checkpoint import load_supernet, save_supernet
from nat.io.files import atomic_write, markdown_table, save_figure, write_json
from nat.run import data_settings_of, load_data, prepare_supernet, run
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared/data/cifar10-train-jpeg.tar.gz"


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
    quality_space: str = "mbv2"
    quality_subset: int = 20_000
    quality_holdout: float = 0.25
    quality_resolution: int = 32
    quality_budgets: tuple[float, ...] = (3e5, 1e6)
    quality_limits: tuple[float, ...] = (1800.0, 3600.0)  # seconds, one per budget
    quality_seeds: tuple[int, ...] = (0, 1, 2)  # of the first budget's search; one elsewhere
    quality_peers: tuple[str, ...] = ("mobilenet_v2",)  # ShuffleNetV2 scored 5 points lower
    quality_curve_fractions: tuple[float, ...] = (1 / 3, 2 / 3)  # of the first limit
    quality_epochs: int = 15  # (b): the peers' 15 epochs, which time their epochs
    quality_max_epochs: int = 1000  # cap of (c)
    quality_options: dict = field(default_factory=dict)  # flat run options beyond the defaults
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
    quality_subset=600,
    quality_resolution=16,
    quality_budgets=(3e5,),
    quality_limits=(40.0,),
    quality_seeds=(0,),
    quality_curve_fractions=(),
    quality_epochs=1,
    quality_max_epochs=2,
    quality_options={"width_mults": [0.25, 0.5], "onnx": False, "bn_batches": 2},
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
    target_limit=30.0,
    scaling_subset=400,
    scaling_batch=32,
    multiexit_seeds=(0,),
    multiexit_epochs=1,
    multiexit_points=4,
)


def _digest(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


class Bench:
    """What the benchmarks share: data, space, the pre-trained supernet, a pool of evaluated
    random subnets, and the NAT run of each seed. Runs are described by ``RunSpec``s built on
    :attr:`base` (the settings as run options), all on seed 0's data split."""

    def __init__(self, settings: Settings, data_source: str, out: Path) -> None:
        self.s, self.out = settings, Path(out)
        s = settings
        self.pretrain_spec = RunSpec.from_options(
            space=s.space,
            resolutions=s.resolutions,
            width_mults=s.width_mults,
            data=data_source,
            subset=s.subset,
            pretrain_epochs=s.pretrain_epochs,
            seed=0,
            split_seed=0,  # one split for every seed: methods differ only in how they search
        )
        self.base = RunSpec.from_options(
            self.pretrain_spec,
            max_params=s.max_params,
            iterations=s.iterations,
            doe_size=s.doe_size,
            candidates=s.candidates,
            population=s.population,
            generations=s.generations,
            adapt_epochs=1,
            bn_batches=s.bn_batches,
            onnx=False,  # the search benchmarks time searches; section 9 times exports
        )
        self.space = self.base.build_space()
        self.data_settings = data_settings_of(self.base)
        self._data: DataSplits | None = None
        self._pretrained = self._pool = None
        self.pretrain_s: float | None = None
        self.pretrain_key = ""  # set by pretrained_path()

    # -- data ------------------------------------------------------------------------------
    def spec(self, seed: int = 0, **options: Any) -> RunSpec:
        """The settings as a RunSpec with ``seed`` and further flat ``options``."""
        return RunSpec.from_options(self.base, seed=seed, **options)

    @property
    def data(self) -> DataSplits:
        """The one data split of every run (seed 0's)."""
        if self._data is None:
            start = time.perf_counter()
            d = self._data = load_data(self.base)
            print(
                f"data: {len(d.train)} train / {len(d.val)} val / {len(d.test)} test images of "
                f"{d.num_classes} classes ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
        return self._data

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.space, self.data.num_classes, self.s.max_params)

    def evaluator(self, seed: int, data: DataSplits | None = None) -> SubnetEvaluator:
        return SubnetEvaluator(data or self.data, self.s.bn_batches, seed=seed)

    # -- the shared pre-trained supernet ---------------------------------------------------
    def pretrained_path(self) -> Path:
        """The shared pre-trained supernet's checkpoint, trained once and cached in ``out``
        while its spec (recipe defaults included) and data are unchanged."""
        path = self.out / "cache" / "pretrained.pt"
        if self._pretrained is not None:
            return path
        spec = self.pretrain_spec
        key = _digest({"spec": spec.to_dict(), "data": self.data_settings})
        self.pretrain_key = key
        if path.is_file():
            net, meta = load_supernet(path)
            if meta.get("key") == key:
                self._pretrained, self.pretrain_s = net, meta["seconds"]
        if self._pretrained is None:
            start = time.perf_counter()
            net = prepare_supernet(spec, self.data, progress=False)
            self.pretrain_s = time.perf_counter() - start
            save_supernet(path, net, key=key, seconds=self.pretrain_s)
            self._pretrained = net
        print(
            f"pre-trained supernet: {self.s.pretrain_epochs} epochs, {self.pretrain_s:.0f} s",
            flush=True,
        )
        return path

    def pretrained(self) -> supernets.Supernet:
        """A copy of the shared pre-trained supernet."""
        self.pretrained_path()
        return copy.deepcopy(self._pretrained).eval()

    # -- NAT runs --------------------------------------------------------------------------
    def nat_spec(self, seed: int, adapt_epochs: int = 1) -> RunSpec:
        """A NAT search from the shared supernet, as is (no pre-training of its own)."""
        return self.spec(
            seed,
            checkpoint=str(self.pretrained_path()),
            pretrain_epochs=0,
            adapt_epochs=adapt_epochs,
        )

    def nat_search(self, seed: int, adapt_epochs: int) -> SearchResult:
        """A NAT search run now, writing no files."""
        return run(self.nat_spec(seed, adapt_epochs), progress=False)

    def nat_run(self, seed: int) -> tuple[Path, float]:
        """(the run folder of seed ``seed``'s NAT search, its seconds): run now unless a
        finished one of the same spec and pre-trained supernet is cached."""
        spec = self.nat_spec(seed)  # pre-trains first: sets pretrain_key
        return self.cached_run(f"nat-seed{seed}", spec, self.pretrain_key)

    def cached_run(self, name: str, spec: RunSpec, depends_on: str = "") -> tuple[Path, float]:
        """(the folder of ``spec``'s run under ``cache/name``, its wall seconds): run now
        unless a finished run of the same spec (and ``depends_on``) is cached there."""
        folder = self.out / "cache" / name
        stamp = folder.with_name(folder.name + ".done.json")
        spec = RunSpec.from_options(spec, out=str(folder))
        key = _digest({"spec": {**spec.to_dict(), "out": None}, "depends_on": depends_on})
        if stamp.is_file() and (folder / "archive.json").is_file():
            done = json.loads(stamp.read_text())
            if done.get("key") == key:
                return folder, done["seconds"]
        stamp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        result = run(spec, progress=False)
        write_json(stamp, {"key": key, "seconds": result.seconds})
        return folder, result.seconds

    def cached(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``'s JSON-able value, kept in ``cache/name.json`` and reused while
        ``key`` (what it depends on) is unchanged: hours of training are not redone."""
        path = self.out / "cache" / f"{name}.json"
        digest = _digest(key)
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get("key") == digest:
                return doc["value"]
        value = compute()
        write_json(path, {"key": digest, "value": value})
        return value

    # -- a pool of evaluated random subnets ------------------------------------------------
    def pool(self, n: int) -> dict:
        """``n`` random feasible subnets evaluated with the pre-trained supernet, in chunks of
        ten, each chunk timed (``chunk_s``): the cost of evaluating an archive of any size."""
        if self._pool is None or len(self._pool["accuracy"]) < n:
            net = self.pretrained()
            rng = np.random.default_rng(1234)
            X = sample_feasible(self.budgets, n, rng, Archive(self.space, 10))
            evaluator = self.evaluator(0)
            accuracy, chunk_s = [], []
            for i in range(0, len(X), 10):
                start = time.perf_counter()
                accuracy.extend(evaluator(net, [self.space.decode(x) for x in X[i : i + 10]]))
                chunk_s.append(time.perf_counter() - start)
            self._pool = {"X": X, "accuracy": np.array(accuracy), "chunk_s": chunk_s}
        return self._pool


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


# -- results and their one renderer -------------------------------------------------------------
@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list]


@dataclass
class Plot:
    """A figure of one axes: ``draw(ax)`` fills it; saved as ``file`` in the results folder."""

    file: str
    draw: Callable[[Any], None]
    size: tuple[float, float] = (6, 4)


@dataclass
class Result:
    """What a benchmark returns: ``data`` (its JSON), ``sections`` (tables and paragraphs of
    its markdown, in order), plots, and files to copy into the results folder."""

    data: dict
    sections: list[Table | str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    copies: dict[str, Path] = field(default_factory=dict)


def pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def pct(mean: float, std: float) -> str:
    return pm(100 * mean, 100 * std, 1)


def render(name: str, result: Result, seconds: float, bench: Bench, info: dict) -> str:
    """Write ``<name>.md``, ``<name>.json``, the plots and copies under ``bench.out``;
    returns the markdown."""
    out = bench.out
    text = f"\n## {name} ({seconds:.0f} s)\n"
    for section in result.sections:
        if isinstance(section, Table):
            text += f"\n### {section.title}\n" + markdown_table(section.headers, section.rows)
        else:
            text += f"\n{section}\n"
    for plot in result.plots:
        from matplotlib.figure import Figure

        fig = Figure(figsize=plot.size)
        plot.draw(fig.add_subplot())
        save_figure(fig, out / plot.file)
    for target, source in result.copies.items():
        shutil.copyfile(source, out / target)
    doc = {
        "machine": info,
        "settings": asdict(bench.s),
        "data": bench.data_settings,
        "seconds": seconds,
        **result.data,
    }
    write_json(out / f"{name}.json", doc)
    atomic_write(out / f"{name}.md", lambda f: f.write(text.encode()))
    return text
