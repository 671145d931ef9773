"""What every benchmark shares: the settings (FULL, QUICK, from settings.py), the
:class:`Bench` with its caches (data, the pre-trained supernet, seed-by-seed NAT runs, a pool of
evaluated random subnets), the machine record, and the one renderer of results (markdown,
JSON, plots)."""

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
from nat import run_spec
from nat.data import DataSplits
from nat.engine.archive import Archive
from nat.engine.loop import SearchResult, sample_feasible
from nat.engine.problem import Budgets
from nat.io.checkpoint import load_supernet, save_supernet
from nat.io.files import atomic_write, markdown_table, save_figure, write_json
from nat.prepare import data_settings_of, load_data, prepare_supernet
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator

from .settings import FULL, QUICK, Settings  # noqa: F401  (FULL, QUICK: re-exported)

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared/data/cifar10-train-jpeg.tar.gz"


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
        return run_spec(self.nat_spec(seed, adapt_epochs), progress=False)

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
        result = run_spec(spec, progress=False)
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
