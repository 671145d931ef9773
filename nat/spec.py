"""What a run is, as plain data: :class:`RunSpec` and the settings it is made of.

A RunSpec round-trips to JSON (``run.json`` in every run folder). Its defaults are written
here once: the command line's flags, ``nat.search()``'s keywords and the JSON keys are all
derived from these dataclasses (:data:`OPTIONS`). Nothing here imports torch,
so building the command line stays fast, and :meth:`RunSpec.validate` checks a whole run
before any work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import search_spaces
from search_spaces import PRECISIONS
from search_spaces.base import SpaceOptionError

from .fields import (
    MAX_COUNT,
    MAX_IMAGE_SIDE,
    MAX_SEED,
    OptionError,
    at_least,
    check_fractions,
    check_writable_dir,
    option_help,
    unknown_option,
    within,
)
from .io.files import jsonable
from .options import Option, build, options_of, take_derived
from .recipes import FinetuneSpec, PlanSpec, TrainConfig

__all__ = [
    "OPTIONS",
    "BackendSpec",
    "DataSpec",
    "FinetuneSpec",
    "OptionError",
    "PlanSpec",
    "RunSpec",
    "SearchConfig",
    "TrainConfig",
    "flag_of",
    "spec_error_names",
]

SPEC_FORMAT = "nat-run/1"
METRICS = ("params", "macs", "latency", "peak_memory", "model_size")
LATENCY_RUNTIMES = ("onnxruntime", "torch")
SURROGATE_MODELS = ("rbf", "gp", "mlp", "trees")  # nat.engine.surrogate's, by name
SURROGATES = ("adaptive", *SURROGATE_MODELS)  # "adaptive": the best of them by cross-validation
# Fine-tuning settings of older run.json files that the race and the trained front replaced.
_RETIRED = ("top", "heuristic")


@dataclass(frozen=True)
class SearchConfig:
    """The NAT loop. Budgets: ``max_params`` parameters, ``max_macs`` MACs per image,
    ``max_latency`` milliseconds at batch 1 on this machine (None: unbounded). ``metrics``:
    the complexity objectives besides the error. Latency, as a budget or an objective, is
    predicted from a table of measured units (:mod:`nat.latency`)."""

    # With 3 pre-training epochs, two iterations keep a search at 300k on 10,000 CIFAR-10
    # images within 30 minutes on 2 cores, hand-back included (docs/benchmarks.md §7).
    iterations: int = field(default=2, metadata=option_help("NAT iterations"))
    max_params: float | None = field(
        default=None, metadata=option_help("parameter budget, e.g. 500k or 2.5M", unit="count")
    )
    max_macs: float | None = field(
        default=None,
        metadata=option_help("budget of multiply-accumulates per image, e.g. 60M", unit="count"),
    )
    max_latency: float | None = field(
        default=None,
        metadata=option_help("latency budget at batch 1 on this machine, e.g. 5ms", unit="ms"),
    )
    max_peak_memory: float | None = field(
        default=None,
        metadata=option_help("peak activations (SRAM) at --precision, e.g. 256KB", unit="bytes"),
    )
    max_model_size: float | None = field(
        default=None,
        metadata=option_help("model bytes (flash) at --precision, e.g. 300KB", unit="bytes"),
    )
    precision: str = field(
        default="fp32",
        metadata=option_help(
            "deployed precision: memory budgets count its bytes; int8 exports model.int8.onnx",
            choices=PRECISIONS,
        ),
    )
    metrics: tuple[str, ...] = field(
        default=("params",),
        metadata=option_help("complexity objectives besides the error", choices=METRICS),
    )
    latency_runtime: str = field(
        default="onnxruntime",
        metadata=option_help("what latency is measured with", choices=LATENCY_RUNTIMES),
    )
    latency_threads: int = field(
        default=1, metadata=option_help("threads latency is measured with")
    )
    latency_table: str | None = field(
        default=None,
        metadata=option_help(
            "a table from nat latency-table (default: this machine's cached one, built if missing)"
        ),
    )
    doe_size: int = field(default=16, metadata=option_help("random subnets in the initial archive"))
    candidates: int = field(
        default=8, metadata=option_help("subnets evaluated for real per iteration")
    )
    population: int = field(default=40, metadata=option_help("NSGA-II population"))
    generations: int = field(default=20, metadata=option_help("NSGA-II generations per iteration"))
    surrogate: str = field(
        default="adaptive",
        metadata=option_help(
            "accuracy predictor (adaptive: best cross-validated tau)", choices=SURROGATES
        ),
    )
    adapt_epochs: int = field(
        default=1, metadata=option_help("supernet adaptation epochs per iteration; 0 turns it off")
    )
    adapt_top: int = field(
        default=150, metadata=option_help("archive entries whose choices adaptation samples from")
    )
    heuristic_budgets: tuple[float, ...] = field(
        default=(),
        metadata=option_help(
            "budgets of the Feillet seeds (default 1/4, 1/2 and all of the budget)", unit="count"
        ),
    )
    warm_start: str | None = field(
        default=None,
        metadata=option_help(
            "a previous run's folder: its archive's front seeds this search's archive, "
            "scored again on this data (those outside this space are left out)"
        ),
    )
    bn_batches: int = field(
        default=20, metadata=option_help("training batches for BatchNorm recalibration")
    )
    batch_size: int = field(default=64, metadata=option_help("images per batch"))
    lr: float = field(default=0.01, metadata=option_help("learning rate of supernet adaptation"))
    seed: int = field(default=0, metadata=option_help("seed of sampling and NSGA-II"))

    @property
    def cost_limits(self) -> dict[str, float | None]:
        """The budgets that are analytic in the architecture, by metric (None: unbounded)."""
        return {m: getattr(self, f"max_{m}") for m in search_spaces.COST_METRICS}

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "heuristic_budgets", tuple(self.heuristic_budgets))
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise OptionError(
                "metrics", f"must be distinct ones of {list(METRICS)}, got {list(self.metrics)}"
            )
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise OptionError("latency_runtime", f"choose one of {list(LATENCY_RUNTIMES)}")
        if self.surrogate not in SURROGATES:
            raise OptionError("surrogate", f"choose one of {list(SURROGATES)}")
        at_least(self, 0, "adapt_epochs")
        within(self, 0, MAX_COUNT, "iterations")
        counts = ("doe_size", "candidates", "population", "generations", "bn_batches")
        within(self, 1, MAX_COUNT, *counts, "adapt_top", "batch_size")
        at_least(self, 1, "latency_threads")
        if not self.lr > 0:
            raise OptionError("lr", f"must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise OptionError("precision", f"choose one of {list(PRECISIONS)}")
        for name in ("max_params", "max_macs", "max_latency", "max_peak_memory", "max_model_size"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise OptionError(name, f"must be a positive number, got {value}")
        if any(not (math.isfinite(b) and b > 0) for b in self.heuristic_budgets):
            raise OptionError(
                "heuristic_budgets", f"must be positive, got {self.heuristic_budgets}"
            )


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how they are split (stratified, by the run's seed)."""

    source: str = field(
        default="digits",
        metadata=option_help(
            "'digits' (scikit-learn's bundled 8x8 digits), an ImageFolder directory, or a "
            ".tar.gz of one"
        ),
    )
    subset: int | None = field(
        default=None, metadata=option_help("use a stratified subset of N images in total")
    )
    image_size: int | None = field(
        default=None,
        metadata=option_help("side of the stored images in px (default: the largest resolution)"),
    )
    val_fraction: float = field(
        default=0.1, metadata=option_help("fraction of each class held out for validation")
    )
    test_fraction: float = field(
        default=0.1, metadata=option_help("fraction of each class held out for testing")
    )
    cache_dir: str | None = field(
        default=None,
        metadata=option_help(
            "where archives are unpacked (default $NAT_CACHE_DIR or ~/.cache/nat)"
        ),
    )
    split_seed: int | None = field(
        default=None,
        metadata=option_help(
            "seed of the subset and the splits (default: the run's seed), to search with "
            "several seeds on one split"
        ),
    )

    classes: tuple[str, ...] = field(
        default=(),
        metadata=option_help(
            "keep only these classes, by name or number (default: all), e.g. the first "
            "state's classes of an incremental scenario; each image keeps its split"
        ),
    )

    def __post_init__(self) -> None:
        if not self.source:
            raise OptionError("source", "give 'digits', an ImageFolder directory or a .tar.gz")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.classes) == 1:
            raise OptionError("classes", "give at least 2 classes, or none for all")
        check_fractions(self.val_fraction, self.test_fraction)
        if self.subset is not None:
            at_least(self, 2, "subset")
        if self.split_seed is not None:
            within(self, 0, MAX_SEED, "split_seed")
        if self.image_size is not None:
            within(self, 8, MAX_IMAGE_SIDE, "image_size")


@dataclass(frozen=True)
class BackendSpec:
    """Where subnets are evaluated: in this process, on local Ray workers, or a cluster."""

    workers: int | None = field(
        default=None, metadata=option_help("evaluate subnets on N local Ray workers, one CPU each")
    )
    address: str | None = field(
        default=None,
        metadata=option_help(
            "evaluate on the Ray cluster at ADDR: auto, host:port or ray://host:port (the data "
            "path must exist on every node)"
        ),
    )
    adapt_workers: int = field(
        default=0,
        metadata=option_help("adapt the supernet data-parallel on N >= 2 Ray Train workers"),
    )

    def __post_init__(self) -> None:
        if self.workers is not None:
            at_least(self, 1, "workers")
        if self.adapt_workers and self.adapt_workers < 2:
            raise OptionError("adapt_workers", f"must be 0 or at least 2, got {self.adapt_workers}")
        if self.adapt_workers and self.workers is None and self.address is None:
            raise OptionError("adapt_workers", "needs Ray: give --workers or --address too")
        if self.workers is not None and self.address is not None:
            raise OptionError(
                "workers", "give --workers (local Ray) or --address (a cluster), not both"
            )

    @property
    def in_process(self) -> bool:
        return self.workers is None and self.address is None


# Settings of the whole run that its parts carry too: set once, at the top, and handed down.
_DERIVED_SETTINGS = (("search", "seed"), ("search", "batch_size"), ("pretrain", "seed"))


@dataclass(frozen=True)
class RunSpec:
    """One search run: space, data, budgets and search, pre-training recipe, backend."""

    space: str = field(
        default="mbv2",
        metadata=option_help(
            "search space / network family", choices=tuple(search_spaces.list_spaces())
        ),
    )
    space_options: dict = field(
        default_factory=dict,
        metadata=option_help(
            'space options as JSON, e.g. \'{"kernel_sizes": [3, 5], "stem": "imagenet"}\''
        ),
    )
    data: DataSpec = field(default_factory=DataSpec)
    search: SearchConfig = field(default_factory=SearchConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    plan: PlanSpec = field(default_factory=PlanSpec)
    backend: BackendSpec = field(default_factory=BackendSpec)
    checkpoint: str | None = field(
        default=None, metadata=option_help("start from this trained supernet (default: train one)")
    )
    device: str = field(
        default="auto",
        metadata=option_help(
            "where to compute: auto (CUDA when present), cpu or cuda",
            choices=("auto", "cpu", "cuda"),
        ),
    )
    # Their defaults are the search's: __post_init__ hands the run's values down to it.
    seed: int = field(
        default=SearchConfig.seed, metadata=option_help("seed of splits, sampling and training")
    )
    batch_size: int = field(
        default=SearchConfig.batch_size, metadata=option_help("images per batch")
    )
    out: str | None = field(
        default=None, metadata=option_help("run folder (default runs/search-SPACE)")
    )

    def __post_init__(self) -> None:
        within(self, 0, MAX_SEED, "seed")
        # One seed per run, and the search's batch size: the parts get them from here.
        # Pre-training keeps its own batch size: small batches buy a short schedule more steps.
        object.__setattr__(
            self, "search", replace(self.search, seed=self.seed, batch_size=self.batch_size)
        )
        object.__setattr__(self, "pretrain", replace(self.pretrain, seed=self.seed))
        object.__setattr__(self, "space_options", jsonable(dict(self.space_options)))

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        doc = jsonable(asdict(self))
        del doc["search"]["seed"], doc["search"]["batch_size"], doc["pretrain"]["seed"]
        return {"format": SPEC_FORMAT, **doc}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "run spec") -> RunSpec:
        if not isinstance(doc, dict):
            raise OptionError("spec", f"{where} must be a JSON object, got {type(doc).__name__}")
        doc = dict(doc)
        if doc.pop("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise OptionError("spec", f"{where} is not a {SPEC_FORMAT} document")
        doc.pop("timing", None)  # a finished run's record of its stages, not a setting
        defaults = {path[-1]: getattr(cls, path[-1]) for path in _DERIVED_SETTINGS}
        take_derived(doc, _DERIVED_SETTINGS, defaults, where)
        finetune = doc.get("finetune")
        if isinstance(finetune, dict):  # settings of older versions, now the race's to decide
            doc["finetune"] = {k: v for k, v in finetune.items() if k not in _RETIRED}
        return spec_error_names(lambda: build(cls, doc, where))

    @classmethod
    def from_options(cls, base: RunSpec | None = None, **options: Any) -> RunSpec:
        """A spec from flat options (``nat.search()``'s keywords, the CLI's flags), on top of
        ``base``; unknown names are errors that suggest the nearest known one."""
        doc = (base or cls()).to_dict()
        for name, value in options.items():
            if name not in OPTIONS:
                raise unknown_option(name, OPTIONS, "option", listed=True)
            OPTIONS[name].set(doc, value)
        return cls.from_dict(doc)

    # -- checks ------------------------------------------------------------------------------
    def build_space(self) -> search_spaces.SearchSpace:
        """The search space, or an error naming the option at fault."""
        known = _space_keys(self.space)
        unknown = sorted(set(self.space_options) - set(known))
        if unknown:
            raise OptionError(
                "space_options", f"{unknown} unknown for {self.space}; valid keys: {known}"
            )
        try:
            return search_spaces.get(self.space, **self.space_options)
        except SpaceOptionError as err:  # resolutions and width_mults have flags of their own
            if err.option in ("resolutions", "width_mults"):
                raise OptionError(err.option, err.message) from None
            raise OptionError("space_options", str(err)) from None
        except ValueError as err:
            raise OptionError("space_options", str(err)) from None

    def validate(self) -> RunSpec:
        """Check everything that can be checked without loading data or training; returns the
        spec with paths made absolute. Errors name the user's flag."""

        def check() -> RunSpec:
            self.build_space()
            source = self.data.source
            if source != "digits":
                path = Path(source).expanduser()
                if not path.exists():
                    raise OptionError(
                        "source",
                        f"{source} not found: give 'digits', an ImageFolder directory or a "
                        ".tar.gz of one",
                    )
                source = str(path.resolve())
            checkpoint = self.checkpoint
            if checkpoint is not None:
                if not Path(checkpoint).is_file():
                    raise OptionError("checkpoint", f"{checkpoint} not found")
                checkpoint = str(Path(checkpoint).resolve())
            if self.data.cache_dir is not None:
                check_writable_dir(self.data.cache_dir, "cache_dir")
            elif os.environ.get("NAT_CACHE_DIR"):  # the default, checked as early
                check_writable_dir(os.environ["NAT_CACHE_DIR"], "NAT_CACHE_DIR")
            adapt_workers = self.backend.adapt_workers
            if adapt_workers and self.search.batch_size % adapt_workers:
                raise OptionError(
                    "adapt_workers",
                    f"{adapt_workers} workers cannot share the batch of {self.search.batch_size} "
                    "equally: give a batch size that is a multiple of it",
                )
            if self.backend.address is not None:
                from .backends.address import check_address  # no Ray import needed

                check_address(self.backend.address)
            table = self.search.latency_table
            if table is not None:
                if not Path(table).is_file():
                    raise OptionError("latency_table", f"{table} not found")
                table = str(Path(table).resolve())
            warm = self.search.warm_start
            if warm is not None:
                if not (Path(warm) / "archive.json").is_file():
                    raise OptionError(
                        "warm_start", f"{warm} holds no archive.json: give a nat search run folder"
                    )
                warm = str(Path(warm).resolve())
            return replace(
                self,
                data=replace(self.data, source=source),
                search=replace(self.search, latency_table=table, warm_start=warm),
                checkpoint=checkpoint,
            )

        return spec_error_names(check)


def _space_keys(name: str) -> list[str]:
    """The option names the search space ``name`` takes."""
    import inspect

    if name not in search_spaces.list_spaces():
        raise OptionError(
            "space", f"unknown space {name!r}: choose one of {search_spaces.list_spaces()}"
        )
    cls = type(search_spaces.get(name))
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


# Flat names differing from the field's own name; the rest keep it.
_FLAT_NAMES = {
    ("data", "source"): "data",
    ("search", "metrics"): "objectives",
    ("search", "lr"): "adapt_lr",
    ("pretrain", "epochs"): "pretrain_epochs",
    ("pretrain", "lr"): "pretrain_lr",
    ("pretrain", "batch_size"): "pretrain_batch_size",
    ("finetune", "epochs"): "finetune_epochs",
    ("finetune", "label_smoothing"): "finetune_label_smoothing",
    ("finetune", "lr"): "finetune_lr",
    ("finetune", "weight_decay"): "finetune_weight_decay",
    ("finetune", "distill_weight"): "finetune_distill_weight",
}
OPTIONS: dict[str, Option] = options_of(RunSpec, _FLAT_NAMES, _DERIVED_SETTINGS)


def flag_of(option: str | tuple[str, ...]) -> str:
    """The user's name for a setting: ``--doe-size`` for ``doe_size`` or its path
    ``("search", "doe_size")``, ``--data`` for ``("data", "source")``; a flag stays one."""
    if isinstance(option, tuple):
        matches = [o for o in OPTIONS.values() if o.path == option]
        if not matches:  # a section, e.g. ("search",)
            return option[-1]
        return matches[0].flag
    if option in OPTIONS:
        return OPTIONS[option].flag
    matches = [o for o in OPTIONS.values() if o.path[-1] == option]
    return matches[0].flag if len(matches) == 1 else option


def spec_error_names(build: Callable[[], Any]) -> Any:
    """Run ``build``; an OptionError from it is raised again naming the flag, not the field:
    the one renaming (code that knows the flag raises ``OptionError("--out", ...)``)."""
    try:
        return build()
    except OptionError as err:
        raise err.named(flag_of(err.option)) from None
