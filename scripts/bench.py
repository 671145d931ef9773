"""Benchmark suite: search quality, heuristic vs searched, ranking fidelity, surrogate quality,
speed and cost growth. Each benchmark prints a summary table and writes ``<name>.json`` and
``<name>.md`` (plus plots) under ``--out``.

    python scripts/bench.py                          # all six on a CIFAR-10 subset
    python scripts/bench.py search fidelity          # some of them
    python scripts/bench.py --quick --data digits    # every code path in about two minutes

The data defaults to ``cifar10-train-jpeg.tar.gz`` in the ``shared/data`` folder beside the
repository; ``--data`` takes any path that ``nat`` loads, or ``digits``. Every benchmark of a
run shares one pre-trained supernet (cached in ``--out`` and reused while the settings are
unchanged), so that methods differ only in how they search. Figures that compare two things
(supernet vs static, 2 vs 1 workers) are measured side by side, interleaved, in one run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pymoo.core.problem import Problem
from pymoo.termination.default import DefaultMultiObjectiveTermination

import search_spaces
import supernets
from nat.api import prepare_supernet
from nat.backends.ray import RayRunner, ray_session
from nat.compare import compare
from nat.data import data_settings, load_from_settings, make_loader
from nat.engine.archive import Archive
from nat.engine.heuristic import depth_only, feillet, reference_arch, width_only
from nat.engine.loop import NATSearch, SearchConfig, _sample_feasible, hypervolume
from nat.engine.problem import Budgets, make_nsga2
from nat.engine.surrogate import SURROGATES, make_surrogate, rank_metrics
from nat.io.checkpoint import load_supernet, save_supernet
from nat.io.files import atomic_write, save_figure, write_json
from nat.profile import profile
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import TrainConfig, evaluate, finetune

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpeg.tar.gz"


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
    # cost growth
    archive_sizes: tuple[int, ...] = (20, 40, 80, 120)
    population_sizes: tuple[int, ...] = (20, 40, 80, 160)

    def key(self, *fields: str) -> str:
        """A digest of the named fields (all when none): what a cached result depends on."""
        doc = asdict(self)
        picked = {f: doc[f] for f in fields} if fields else doc
        return hashlib.sha1(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


FULL = Settings()
QUICK = Settings(
    resolutions=(16, 20),
    width_mults=(0.125, 0.25),
    subset=600,
    max_params=4e5,
    pretrain_epochs=4,
    bn_batches=2,
    seeds=(0, 1),
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
)

PRETRAIN_FIELDS = ("space", "resolutions", "width_mults", "subset", "pretrain_epochs")


class Bench:
    """What the benchmarks share: data, space, the pre-trained supernet, a pool of evaluated
    random subnets, and seed 0's NAT run."""

    def __init__(self, settings: Settings, data_source: str, out: Path) -> None:
        self.s, self.out = settings, out
        self.space = search_spaces.get(
            settings.space, resolutions=settings.resolutions, width_mults=settings.width_mults
        )
        self.data_settings = data_settings(
            data_source, max(settings.resolutions), 0, settings.subset
        )
        self._data = self._pretrained = self._pool = None
        self.pretrain_s: float | None = None
        self.pretrain_key = ""  # set by pretrained()

    @property
    def data(self):
        if self._data is None:
            start = time.perf_counter()
            self._data = load_from_settings(self.data_settings)
            d = self._data
            print(
                f"data: {len(d.train)} train / {len(d.val)} val / {len(d.test)} test images "
                f"of {d.num_classes} classes ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
        return self._data

    @property
    def budgets(self) -> Budgets:
        return Budgets(self.space, self.data.num_classes, self.s.max_params)

    def pretrained(self) -> supernets.Supernet:
        """A copy of the shared pre-trained supernet (trained once; cached in ``out``)."""
        if self._pretrained is None:
            path = self.out / "cache" / "pretrained.pt"
            # The training recipe's defaults count too: a changed default retrains.
            recipe = {**self.data_settings, **asdict(TrainConfig())}
            key = self.s.key(*PRETRAIN_FIELDS) + json.dumps(recipe, sort_keys=True)
            self.pretrain_key = hashlib.sha1(key.encode()).hexdigest()[:12]
            if path.is_file():
                net, meta = load_supernet(path)
                if meta.get("key") == key:
                    self._pretrained, self.pretrain_s = net, meta["seconds"]
            if self._pretrained is None:
                start = time.perf_counter()
                net = prepare_supernet(
                    self.data,
                    self.s.space,
                    {"resolutions": self.s.resolutions, "width_mults": self.s.width_mults},
                    None,
                    self.s.pretrain_epochs,
                    seed=0,
                    progress=False,
                )
                self.pretrain_s = time.perf_counter() - start
                save_supernet(path, net, key=key, seconds=self.pretrain_s)
                self._pretrained = net
            print(
                f"pre-trained supernet: {self.s.pretrain_epochs} epochs, {self.pretrain_s:.0f} s",
                flush=True,
            )
        return copy.deepcopy(self._pretrained).eval()

    def evaluator(self, seed: int) -> SubnetEvaluator:
        return SubnetEvaluator(self.data, self.s.bn_batches, seed=seed)

    def search_config(self, seed: int, adapt_epochs: int) -> SearchConfig:
        s = self.s
        return SearchConfig(
            iterations=s.iterations,
            max_params=s.max_params,
            doe_size=s.doe_size,
            candidates=s.candidates,
            population=s.population,
            generations=s.generations,
            adapt_epochs=adapt_epochs,
            bn_batches=s.bn_batches,
            seed=seed,
        )

    def nat_run(self, seed: int) -> Path:
        """The folder of seed ``seed``'s NAT search (archive.json with its history, and the
        adapted supernet.pt), run now unless a finished one with these settings exists."""
        folder = self.out / "cache" / f"nat-seed{seed}"
        self.pretrained()  # sets pretrain_key: a retrained supernet means a new search
        key = self.s.key() + self.pretrain_key
        archive = folder / "archive.json"
        if archive.is_file() and json.loads(archive.read_text()).get("bench_key") == key:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        config = self.search_config(seed, adapt_epochs=1)
        metadata = {"data": self.data_settings, "bench_key": key}
        search = NATSearch(self.pretrained(), self.data, config, folder, None, False, metadata)
        start = time.perf_counter()
        search.run()
        search.archive.save(
            archive, **metadata, seconds=time.perf_counter() - start, history=search.history
        )
        return folder

    def pool(self, n: int) -> dict:
        """``n`` random feasible subnets evaluated with the pre-trained supernet, in chunks of
        ten, each chunk timed (``chunk_s``): the cost of evaluating an archive of any size."""
        if self._pool is None or len(self._pool["accuracy"]) < n:
            net = self.pretrained()
            rng = np.random.default_rng(1234)
            X = _sample_feasible(self.budgets, n, rng, Archive(self.space, 10))
            evaluator = self.evaluator(0)
            accuracy, chunk_s = [], []
            for i in range(0, len(X), 10):
                start = time.perf_counter()
                accuracy.extend(evaluator(net, [self.space.decode(x) for x in X[i : i + 10]]))
                chunk_s.append(time.perf_counter() - start)
            self._pool = {"X": X, "accuracy": np.array(accuracy), "chunk_s": chunk_s}
        return self._pool


# -- 1. search quality ---------------------------------------------------------------------------
class RealProblem(Problem):
    """Error and params / budget of subnets measured with the supernet (no surrogate); the
    first ``limit`` distinct feasible designs are evaluated, later ones are not."""

    def __init__(self, budgets: Budgets, supernet, evaluator, limit: int) -> None:
        space = budgets.space
        super().__init__(
            n_var=space.n_var,
            n_obj=2,
            n_ieq_constr=1,
            xl=space.lower.astype(float),
            xu=space.upper.astype(float),
            vtype=int,
        )
        self.budgets, self.supernet, self.evaluator, self.limit = (
            budgets,
            supernet,
            evaluator,
            limit,
        )
        self.archive = Archive(space, budgets.num_classes)
        self.known: dict[tuple, float] = {}

    def _evaluate(self, X, out, *args, **kwargs):
        space = self.budgets.space
        X = space.repair(X)
        G = self.budgets.violation(X)
        todo = []
        for x, g in zip(X, G, strict=True):
            key = tuple(x)
            room = self.limit - len(self.known) - len(todo)
            if (g <= 0).all() and key not in self.known and key not in todo and room > 0:
                todo.append(key)
        if todo:
            new = np.array(todo)
            accuracy = self.evaluator(self.supernet, [space.decode(x) for x in new])
            self.archive.add(new, accuracy, "nsga2-real", 0)
            self.known.update(zip(todo, accuracy, strict=True))
        # Designs left unevaluated (over the limit or infeasible) count as chance-less.
        error = np.array([1.0 - self.known.get(tuple(x), 0.0) for x in X])
        params, _ = space.complexity(X, self.budgets.num_classes)
        out["F"] = np.column_stack([error, params / self.budgets.scale["params"]])
        out["G"] = G


def nsga2_on_real_evaluations(bench: Bench, n: int, seed: int) -> Archive:
    """pymoo's NSGA-II measuring every design with the pre-trained supernet, until ``n``
    distinct subnets are evaluated; starts from random feasible designs, as NAT does."""
    budgets = bench.budgets
    problem = RealProblem(budgets, bench.pretrained(), bench.evaluator(seed), n)
    pop = bench.s.real_population
    rng = np.random.default_rng(seed + 20_000)
    X0 = _sample_feasible(budgets, pop, rng, Archive(bench.space, 10))
    algorithm = make_nsga2(bench.space, X0, len(X0))
    algorithm.setup(
        problem, termination=DefaultMultiObjectiveTermination(n_max_gen=10**6), seed=seed
    )
    for _ in range(1000):  # generations; a space too small to hold n designs stops here
        if len(problem.known) >= n:
            break
        infills = algorithm.ask()
        algorithm.evaluator.eval(problem, infills)
        algorithm.tell(infills=infills)
    return problem.archive


def random_search(bench: Bench, n: int, seed: int) -> Archive:
    """``n`` distinct random feasible subnets, measured with the pre-trained supernet."""
    archive = Archive(bench.space, bench.data.num_classes)
    X = _sample_feasible(bench.budgets, n, np.random.default_rng(seed + 10_000), archive)
    archive.add(
        X,
        bench.evaluator(seed)(bench.pretrained(), [bench.space.decode(x) for x in X]),
        "random",
        0,
    )
    return archive


def heuristic_archive(bench: Bench, method, seed: int) -> Archive:
    """The heuristic's architectures at log-spaced parameter budgets up to the budget."""
    space, num_classes = bench.space, bench.data.num_classes
    smallest = space.complexity(space.smallest(), num_classes)[0]
    archive = Archive(space, num_classes)
    X = []
    for budget in np.geomspace(smallest, bench.s.max_params, bench.s.heuristic_budgets):
        try:
            x = space.encode(method(float(budget), None, num_classes, space=space).arch)
        except ValueError:
            continue  # nothing of this method fits so small a budget
        if not any((x == y).all() for y in X):
            X.append(x)
    X = np.array(X)
    archive.add(
        X,
        bench.evaluator(seed)(bench.pretrained(), [space.decode(x) for x in X]),
        method.__name__,
        0,
    )
    return archive


def bench_search(bench: Bench) -> dict:
    s, budgets = bench.s, bench.budgets
    bench.pretrained()
    methods = ["NAT", "NAT without adaptation", "NSGA-II, real evaluations", "random search"]
    heuristics = {
        "heuristic (Feillet)": feillet,
        "width-only": width_only,
        "depth-only": depth_only,
    }
    per_seed = []
    for seed in s.seeds:
        row, fronts = {}, {}
        doc = json.loads((bench.nat_run(seed) / "archive.json").read_text())
        row["NAT"] = _timed(Archive.from_dict(doc), budgets, time.perf_counter() - doc["seconds"])
        n = len(doc["entries"])
        start = time.perf_counter()
        search = NATSearch(
            bench.pretrained(), bench.data, bench.search_config(seed, 0), progress=False
        )
        row["NAT without adaptation"] = _timed(search.run().archive, budgets, start)
        start = time.perf_counter()
        row["NSGA-II, real evaluations"] = _timed(
            nsga2_on_real_evaluations(bench, n, seed), budgets, start
        )
        start = time.perf_counter()
        row["random search"] = _timed(random_search(bench, n, seed), budgets, start)
        for label, method in heuristics.items():
            start = time.perf_counter()
            row[label] = _timed(heuristic_archive(bench, method, seed), budgets, start)
        for label, r in row.items():
            fronts[label] = r.pop("front")
        per_seed.append({"seed": seed, "methods": row, "fronts": fronts})
        print(
            f"seed {seed}: " + ", ".join(f"{k} HV {v['hv']:.4f}" for k, v in row.items()),
            flush=True,
        )
    labels = methods + list(heuristics)
    rows = []
    for label in labels:
        hv = [p["methods"][label]["hv"] for p in per_seed]
        rows.append(
            [
                label,
                _mean_std(hv, 4),
                _mean_std([p["methods"][label]["evaluated"] for p in per_seed], 0),
                _mean_std([p["methods"][label]["seconds"] for p in per_seed], 0),
            ]
        )
    ratio = [p["methods"]["NAT"]["hv"] / p["methods"]["random search"]["hv"] for p in per_seed]
    ratio_nsga = [
        p["methods"]["NAT"]["hv"] / p["methods"]["NSGA-II, real evaluations"]["hv"]
        for p in per_seed
    ]
    text = _table(
        f"Hypervolume, params budget {s.max_params:,.0f}, {len(s.seeds)} seeds "
        "(error and params / budget; reference point 1.01)",
        ["method", "HV mean ± std", "subnets evaluated", "seconds"],
        rows,
    )
    text += (
        f"\nNAT / random search HV: {_mean_std(ratio, 3)}; "
        f"NAT / NSGA-II on real evaluations: {_mean_std(ratio_nsga, 3)}\n"
    )
    history = json.loads((bench.nat_run(s.seeds[0]) / "archive.json").read_text())["history"]
    text += _table(
        f"NAT iterations (seed {s.seeds[0]}; seconds)",
        [
            "iteration",
            "archive",
            "HV",
            "surrogate",
            "CV tau",
            "tau on new",
            "adapt",
            "surrogate fit",
            "NSGA-II",
            "evaluate",
            "total",
        ],
        [
            [
                h["iteration"],
                h["archive_size"],
                f"{h['hv']:.4f}",
                h["surrogate"],
                f"{h['surrogate_cv_tau']:.2f}",
                f"{h.get('new_kendall_tau', float('nan')):.2f}",
            ]
            + [
                f"{h[k]:.1f}"
                for k in ("adapt_s", "surrogate_s", "nsga2_s", "evaluate_s", "seconds")
            ]
            for h in history[1:]
        ],
    )
    _plot_fronts(bench.out / "search_pareto.png", per_seed[0]["fronts"], s.max_params)
    return {
        "text": text,
        "per_seed": per_seed,
        "nat_over_random": ratio,
        "nat_over_nsga2_real": ratio_nsga,
        "nat_history": history,
    }


def _timed(archive: Archive, budgets: Budgets, start: float) -> dict:
    front = [i for i in archive.front(("params",)) if budgets.feasible(archive.X[i][None])[0]]
    return {
        "hv": hypervolume(archive, budgets, ("params",)),
        "evaluated": len(archive),
        "seconds": time.perf_counter() - start,
        "front": [[archive.entries[i].params, archive.entries[i].accuracy] for i in front],
    }


def _plot_fronts(path: Path, fronts: dict, budget: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, points), marker in zip(fronts.items(), "os^v<>D", strict=False):
        if points:
            p = np.array(sorted(points))
            ax.step(p[:, 0] / 1e6, 100 * p[:, 1], where="post", marker=marker, ms=4, label=label)
    ax.axvline(budget / 1e6, color="grey", ls=":", lw=1)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


# -- 2. heuristic vs searched -----------------------------------------------------------------
def bench_heuristic(bench: Bench) -> dict:
    s = bench.s
    run = bench.nat_run(s.seeds[0])
    budgets = [f * s.max_params for f in s.budget_fractions]
    rows = compare(
        run,
        budgets,
        seeds=s.finetune_seeds,
        finetune_epochs=s.finetune_epochs,
        bn_batches=s.bn_batches,
        progress=False,
        scratch=True,
        methods=("heuristic", "searched"),
    )
    shutil.copyfile(run / "compare.png", bench.out / "heuristic.png")
    table = []
    for r in rows:
        if r["params"] is None:
            table.append([f"{r['budget']:,.0f}", r["method"], "nothing fits", "", "", ""])
            continue
        inherited = _pct(*r["inherited"]) if r["inherited"] else "-"
        table.append(
            [
                f"{r['budget']:,.0f}",
                r["method"],
                f"{r['params']:,}",
                f"{r['macs']:,}",
                inherited,
                _pct(*r["finetuned"]),
            ]
        )
    text = _table(
        f"Heuristic vs best searched (test accuracy %, mean ± std over fine-tuning seeds "
        f"{list(s.finetune_seeds)}; {s.finetune_epochs} epoch(s) of fine-tuning, or of "
        "training from scratch)",
        ["budget", "method", "params", "MACs", "inherited", "fine-tuned / trained"],
        table,
    )
    return {"text": text, "rows": rows}


# -- 3. ranking fidelity --------------------------------------------------------------------------
def bench_fidelity(bench: Bench) -> dict:
    s, space, data = bench.s, bench.space, bench.data
    X = _sample_feasible(bench.budgets, 4000, np.random.default_rng(99), Archive(space, 10))
    params = space.complexity(X, data.num_classes)[0]
    order = np.argsort(params, kind="stable")
    picks = order[np.unique(np.round(np.linspace(0, len(order) - 1, s.fidelity_archs)).astype(int))]
    archs = [space.decode(x) for x in X[picks]]
    inherited = bench.evaluator(0)(bench.pretrained(), archs)
    val = list(make_loader(data.val, 256, shuffle=False))
    scratch, seconds = [], []
    for arch in archs:
        torch.manual_seed(0)
        model = supernets.build_static(arch, data.num_classes)
        start = time.perf_counter()
        finetune(model, data, arch.resolution, s.scratch_epochs, lr=s.scratch_lr, seed=0)
        seconds.append(time.perf_counter() - start)
        scratch.append(evaluate(model, val, arch.resolution))
    complexity = space.complexity(np.array(X[picks]), data.num_classes)
    rows = [
        [
            a.resolution,
            list(a.depths),
            f"{p:,}",
            f"{m:,}",
            f"{100 * i:.1f}",
            f"{100 * t:.1f}",
            f"{sec:.0f}",
        ]
        for a, p, m, i, t, sec in zip(archs, *complexity, inherited, scratch, seconds, strict=True)
    ]
    fidelity = rank_metrics(np.array(scratch), inherited)
    by_params = rank_metrics(np.array(scratch), complexity[0].astype(float))
    text = _table(
        f"Inherited-weight vs from-scratch validation accuracy ({len(archs)} subnets spread "
        f"over the params range up to {s.max_params:,.0f}; scratch: {s.scratch_epochs} epochs, "
        f"SGD lr {s.scratch_lr}, cosine)",
        ["px", "depths", "params", "MACs", "inherited %", "scratch %", "scratch s"],
        rows,
    )
    text += (
        f"\nKendall tau (inherited, scratch) = {fidelity['kendall_tau']:.3f}, Spearman rho = "
        f"{fidelity['spearman_rho']:.3f}; for comparison, tau (params, scratch) = "
        f"{by_params['kendall_tau']:.3f}\n"
    )
    return {
        "text": text,
        "archs": [a.to_dict() for a in archs],
        "inherited": inherited.tolist(),
        "scratch": scratch,
        "kendall_tau": fidelity["kendall_tau"],
        "spearman_rho": fidelity["spearman_rho"],
        "kendall_tau_params": by_params["kendall_tau"],
    }


# -- 4. surrogate quality ------------------------------------------------------------------------
def bench_surrogate(bench: Bench) -> dict:
    s = bench.s
    pool = bench.pool(s.pool_size)
    X, y = pool["X"], pool["accuracy"]
    test, rest = np.arange(s.holdout), np.arange(s.holdout, len(y))
    names = sorted(SURROGATES)
    results: dict[str, dict[int, list[dict]]] = {n: {} for n in names}
    chosen: dict[int, list[str]] = {}
    sizes = [n for n in s.train_sizes if n <= len(rest)]
    for size in sizes:
        for r in range(s.repeats):
            train = np.random.default_rng(r).choice(rest, size, replace=False)
            for name in names:
                model = make_surrogate(name, bench.space, seed=r)
                start = time.perf_counter()
                model.fit(X[train], y[train])
                fit_s = time.perf_counter() - start
                m = rank_metrics(y[test], model.predict(X[test]))
                results[name].setdefault(size, []).append({**m, "fit_s": fit_s})
                if name == "adaptive":
                    chosen.setdefault(size, []).append(model.chosen)
    rows = []
    for size in sizes:
        cells = [size]
        for name in names:
            runs = results[name][size]
            tau = statistics.fmean(m["kendall_tau"] for m in runs)
            rmse = statistics.fmean(m["rmse"] for m in runs)
            cells.append(f"{tau:.2f} / {100 * rmse:.1f}")
        cells.append(", ".join(chosen[size]))
        rows.append(cells)
    text = _table(
        f"Surrogates on {s.holdout} held-out random subnets: Kendall tau / RMSE (accuracy "
        f"points), mean of {s.repeats} draws of the training archive",
        ["archive size", *names, "adaptive chose"],
        rows,
    )
    spread = 100 * float(np.std(y[test]))
    text += (
        f"\nAccuracy spread of the held-out subnets: std {spread:.1f} points (an RMSE to beat).\n"
    )
    _plot_surrogates(bench.out / "surrogate.png", results, sizes)
    return {"text": text, "results": results, "chosen": chosen, "holdout_std": spread / 100}


def _plot_surrogates(path: Path, results: dict, sizes: list[int]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_size in results.items():
        tau = [statistics.fmean(m["kendall_tau"] for m in by_size[n]) for n in sizes]
        ax.plot(sizes, tau, marker="o", label=name, lw=2.5 if name == "adaptive" else 1.2)
    ax.set_xlabel("archive size (training points)")
    ax.set_ylabel("Kendall tau on held-out subnets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


# -- 5. speed --------------------------------------------------------------------------------
def bench_speed(bench: Bench) -> dict:
    s = bench.s
    text = ""
    complexity = _complexity_rate(s)
    text += _table(
        f"Analytic complexity of {s.complexity_population:,} configs at once vs building and "
        "profiling a model per config (configs/s)",
        ["space", "analytic", "build + profile", "ratio"],
        [
            [
                r["space"],
                f"{r['analytic']:,.0f}",
                f"{r['build_profile']:.1f}",
                f"{r['analytic'] / r['build_profile']:,.0f}",
            ]
            for r in complexity
        ],
    )
    forward = _forward_ratio(s)
    text += _table(
        f"Supernet forward ÷ extracted static forward (batch {s.forward_batch}, "
        f"{s.forward_resolution} px, eval mode, median of {s.forward_repeats} interleaved runs)",
        ["space", "subnet", "MACs", "supernet ms", "extracted ms", "ratio"],
        [
            [
                r["space"],
                r["subnet"],
                f"{r['macs']:,}",
                f"{r['supernet_ms']:.1f}",
                f"{r['extracted_ms']:.1f}",
                f"{r['ratio']:.3f}",
            ]
            for r in forward
        ],
    )
    training = _training_throughput(s)
    text += _table(
        f"Training throughput, images/s (batch {s.train_batch}, {s.train_resolution} px, SGD "
        f"steps, median of {s.train_steps} interleaved): the torchvision model vs the same "
        "architecture active in the supernet and extracted from it",
        [
            "model",
            "same params & MACs",
            "torchvision",
            "extracted",
            "supernet",
            "supernet ÷ torchvision",
        ],
        [
            [
                r["model"],
                "yes" if r["same_counts"] else "NO",
                f"{r['torchvision']:.0f}",
                f"{r['extracted']:.0f}",
                f"{r['supernet']:.0f}",
                f"{r['ratio']:.3f}",
            ]
            for r in training
        ],
    )
    ray = _ray_throughput(bench)
    text += _table(
        f"Real evaluations/s of {ray['archs']} subnets ({bench.s.space}, {bench.s.bn_batches} "
        f"BatchNorm batches, {len(bench.data.val)} validation images)",
        [
            "in this process",
            "Ray, 1 worker",
            "Ray, 2 workers",
            "2 ÷ 1 workers",
            "Ray task overhead ms",
        ],
        [
            [
                f"{ray['in_process']:.2f}",
                f"{ray['ray_1']:.2f}",
                f"{ray['ray_2']:.2f}",
                f"{ray['ratio_2_to_1']:.2f}",
                f"{ray['task_overhead_ms']:.2f}",
            ]
        ],
    )
    return {
        "text": text,
        "complexity": complexity,
        "forward": forward,
        "training": training,
        "ray": ray,
    }


def _complexity_rate(s: Settings) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name)
        X = space.sample(s.complexity_population, np.random.default_rng(0))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            space.complexity(X, 10)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for x in X[: s.profiled_configs]:
            arch = space.decode(x)
            profile(supernets.build_static(arch, 10), arch.resolution)
        per_model = (time.perf_counter() - start) / s.profiled_configs
        rows.append(
            {
                "space": name,
                "analytic": len(X) / statistics.median(times),
                "build_profile": 1 / per_model,
            }
        )
    return rows


@torch.no_grad()
def _forward_ratio(s: Settings) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name, resolutions=(s.forward_resolution,))
        net = supernets.build_supernet(space, 10).eval()
        middle = space.decode(space.repair((space.lower + space.upper) / 2))
        images = torch.randn(s.forward_batch, 3, s.forward_resolution, s.forward_resolution)
        for label, arch in (
            ("largest", space.largest()),
            ("middle", middle),
            ("smallest", space.smallest()),
        ):
            net.set_active(arch)
            model = net.extract(arch).eval()
            t_super, t_static = _interleaved(
                partial(net, images), partial(model, images), repeats=s.forward_repeats
            )
            rows.append(
                {
                    "space": name,
                    "subnet": label,
                    "macs": int(space.complexity(arch, 10)[1]),
                    "supernet_ms": 1000 * t_super,
                    "extracted_ms": 1000 * t_static,
                    "ratio": t_super / t_static,
                }
            )
    return rows


TORCHVISION = {"resnet": "resnet18", "mbv2": "mobilenet_v2", "shufflenetv2": "shufflenet_v2_x1_0"}


def _training_throughput(s: Settings) -> list[dict]:
    import torchvision

    rows = []
    for name, tv_name in TORCHVISION.items():
        space = search_spaces.get(
            name, stem="imagenet", resolutions=(s.train_resolution,), width_mults=(0.5, 1.0)
        )
        arch = reference_arch(space)
        torch.manual_seed(0)
        if name == "shufflenetv2":
            # The space rounds channels to multiples of 8 (116 -> 120): torchvision's class
            # built with the same channels is the equivalent model.
            tv_name = "ShuffleNetV2"
            channels = [
                arch.stem_channels,
                *(st.channels for st in arch.stages),
                arch.head_channels,
            ]
            repeats = [len(st.blocks) for st in arch.stages]
            tv_model = torchvision.models.ShuffleNetV2(repeats, channels, num_classes=10)
        else:
            tv_model = torchvision.models.get_model(tv_name, num_classes=10)
        same = profile(tv_model, s.train_resolution) == tuple(
            int(v) for v in space.complexity(arch, 10)
        )
        net = supernets.build_supernet(space, 10)
        net.set_active(arch)
        extracted = net.extract(arch)
        images = torch.randn(s.train_batch, 3, s.train_resolution, s.train_resolution)
        labels = torch.randint(0, 10, (s.train_batch,))
        steps = [_train_step(m, images, labels) for m in (tv_model, extracted, net)]
        times = _interleaved(*steps, repeats=s.train_steps)
        tv, ex, su = (s.train_batch / t for t in times)
        rows.append(
            {
                "model": tv_name,
                "same_counts": same,
                "torchvision": tv,
                "extracted": ex,
                "supernet": su,
                "ratio": su / tv,
            }
        )
    return rows


def _train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def _interleaved(*calls, repeats: int) -> list[float]:
    """Median seconds of each call, run in turn ``repeats`` times after one warm-up each, so
    that drift of a shared machine hits all alike."""
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, t in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _ray_throughput(bench: Bench) -> dict:
    import ray

    s, space = bench.s, bench.space
    net = bench.pretrained()
    X = _sample_feasible(
        bench.budgets, 2 * s.ray_archs, np.random.default_rng(7), Archive(space, 10)
    )
    warm, archs = ([space.decode(x) for x in X[i::2]] for i in (0, 1))
    result = {"archs": len(archs)}
    local = bench.evaluator(0)
    local(net, warm[:2])
    result["in_process"] = _rate(local, net, archs)
    for workers in (1, 2):
        with ray_session(workers=workers):
            # One CPU per worker, so one torch thread each, as in `nat search --workers`.
            runner = RayRunner(
                bench.data_settings,
                space,
                bench.data.num_classes,
                workers,
                bn_batches=s.bn_batches,
                threads=1,
            )
            runner(net, warm[: 2 * workers])  # start-up (data loading) is not counted
            result[f"ray_{workers}"] = _rate(runner, net, archs)
            if workers == 1:
                times = []
                for _ in range(100):
                    start = time.perf_counter()
                    ray.get(runner.actors[0].pid.remote())
                    times.append(time.perf_counter() - start)
                result["task_overhead_ms"] = 1000 * statistics.median(times)
    result["ratio_2_to_1"] = result["ray_2"] / result["ray_1"]
    return result


def _rate(runner, net, archs) -> float:
    start = time.perf_counter()
    runner(net, archs)
    return len(archs) / (time.perf_counter() - start)


# -- 6. cost growth -------------------------------------------------------------------------
def bench_growth(bench: Bench) -> dict:
    s = bench.s
    pool = bench.pool(max(s.archive_sizes))
    net = bench.pretrained()
    # An adaptation epoch costs what a pre-training epoch does, whatever the archive size.
    epoch_s = bench.pretrain_s / s.pretrain_epochs
    chunk_s = np.cumsum(pool["chunk_s"])

    def one_step(n: int, population: int) -> dict:
        config = replace(bench.search_config(0, 0), population=population)
        search = NATSearch(copy.deepcopy(net), bench.data, config, progress=False)
        search.archive.add(pool["X"][:n], pool["accuracy"][:n], "pool", 0)
        return search.step(1)

    by_archive = []
    for n in s.archive_sizes:
        r = one_step(n, s.population)
        reeval = float(np.interp(n, 10 * np.arange(1, len(chunk_s) + 1), chunk_s))
        total = epoch_s + reeval + r["surrogate_s"] + r["nsga2_s"] + r["evaluate_s"]
        by_archive.append(
            {
                "archive": n,
                "adapt_epoch_s": epoch_s,
                "reevaluate_s": reeval,
                **_split(r),
                "total_s": total,
            }
        )
    by_population = []
    for p in s.population_sizes:
        r = one_step(s.archive_sizes[len(s.archive_sizes) // 2], p)
        by_population.append({"population": p, **_split(r)})
    keys = ["adapt_epoch_s", "reevaluate_s", "surrogate_s", "nsga2_s", "evaluate_s", "total_s"]
    text = _table(
        f"One NAT iteration against archive size (population {s.population}, "
        f"{s.generations} generations, {s.candidates} candidates; seconds)",
        [
            "archive",
            "adapt (1 epoch)",
            "re-evaluate archive",
            "surrogate fit",
            "NSGA-II",
            f"evaluate {s.candidates}",
            "total",
        ],
        [[r["archive"]] + [f"{r[k]:.1f}" for k in keys] for r in by_archive],
    )
    n_mid = s.archive_sizes[len(s.archive_sizes) // 2]
    text += _table(
        f"Surrogate and NSGA-II against population size (archive {n_mid}, "
        f"{s.generations} generations; seconds)",
        ["population", "surrogate fit", "NSGA-II", f"evaluate {s.candidates}"],
        [
            [r["population"]] + [f"{r[k]:.2f}" for k in ("surrogate_s", "nsga2_s", "evaluate_s")]
            for r in by_population
        ],
    )
    text += (
        f"\nThe adaptation epoch ({epoch_s:.0f} s) is a pre-training epoch of this run, whose cost "
        "does not depend on the archive; re-evaluating an archive of n subnets is the measured "
        "time of evaluating the first n subnets of the pool.\n"
    )
    return {"text": text, "by_archive": by_archive, "by_population": by_population}


def _split(record: dict) -> dict:
    return {k: record[k] for k in ("surrogate_s", "nsga2_s", "evaluate_s")} | {
        "surrogate": record["surrogate"]
    }


# -- the suite -----------------------------------------------------------------------------------
BENCHES = {
    "search": bench_search,
    "heuristic": bench_heuristic,
    "fidelity": bench_fidelity,
    "surrogate": bench_surrogate,
    "speed": bench_speed,
    "growth": bench_growth,
}


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "benches", nargs="*", metavar="BENCH", help=f"any of {', '.join(BENCHES)} (default: all)"
    )
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="dataset: a path nat loads, or digits"
    )
    parser.add_argument(
        "--out", default="results/bench", help="results folder (default results/bench)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings: checks every code path"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="search seeds (default 0 1 2)")
    args = parser.parse_args(argv)
    names = args.benches or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHES)}")
    if args.data != "digits" and not Path(args.data).exists():
        parser.error(
            f"dataset {args.data} not found: pass --data with the CIFAR-10 archive "
            "(cifar10-train-jpeg.tar.gz), an image folder, or digits"
        )
    settings = QUICK if args.quick else FULL
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    out = Path(args.out)
    bench = Bench(settings, args.data, out)
    info = machine()
    header = (
        f"# Benchmarks ({'quick' if args.quick else 'full'} settings), {info['date']}: "
        f"{info['nproc']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, CUDA {'yes' if info['cuda'] else 'no'}; "
        f"data {Path(args.data).name}\n"
    )
    print(header, flush=True)
    start_all = time.perf_counter()
    summary = [header]
    for name in names:
        start = time.perf_counter()
        result = BENCHES[name](bench)
        seconds = time.perf_counter() - start
        text = f"\n## {name} ({seconds:.0f} s)\n{result.pop('text')}"
        print(text, flush=True)
        summary.append(text)
        doc = {
            "machine": info,
            "settings": asdict(settings),
            "data": bench.data_settings,
            "seconds": seconds,
            **result,
        }
        write_json(out / f"{name}.json", _jsonable(doc))
        atomic_write(out / f"{name}.md", lambda f, t=text: f.write(t.encode()))
    total = time.perf_counter() - start_all
    summary.append(f"\nTotal: {total:.0f} s ({total / 60:.1f} min)\n")
    print(summary[-1], flush=True)
    if set(names) == set(BENCHES):
        atomic_write(out / "summary.md", lambda f: f.write("".join(summary).encode()))
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- formatting ---------------------------------------------------------------------------------
def _mean_std(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _table(title: str, headers: list[str], rows: list[list]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


if __name__ == "__main__":
    sys.exit(main())
