"""The NAT loop: surrogate-guided NSGA-II with online supernet adaptation.

Each iteration (Lu et al., Neural Architecture Transfer, TPAMI 2021):

1. adapt the supernet to the task, training subnets drawn from the per-variable categorical
   distribution of the archive's best architectures (distilled from the largest), then
   re-evaluate the archive, since the weights changed (skipped with ``adapt_epochs=0``);
2. fit the accuracy surrogate on the archive (adaptive switching by cross-validated tau);
3. run NSGA-II on the surrogate, budgets as constraints, seeded with the archive's front;
4. evaluate K new candidates spread along the predicted front for real; add them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from tqdm.auto import tqdm

from search_spaces import COST_METRICS, Arch, SearchSpace
from supernets import Supernet

from ..data import DataSplits
from ..io.checkpoint import save_supernet
from ..latency import latency_table_of
from ..planner import SEED_FRACTIONS, SearchBudget
from ..spec import SearchConfig
from ..training.evaluate import SubnetEvaluator
from ..training.train import TrainConfig, train_supernet
from .archive import Archive, rank_order
from .heuristic import feillet_within
from .problem import Budgets, SurrogateProblem, run_nsga2
from .state import Snapshot, read_snapshot, write_snapshot
from .surrogate import make_surrogate, rank_metrics

__all__ = ["NATSearch", "SearchConfig", "SearchResult", "categorical_sampler"]

# Under a time limit, an iteration adapts for what is left of the planned time, or not at all
# when that is under this share of it.
MIN_ADAPT_SHARE = 0.25

# Evaluates a list of architectures with a supernet: the seam for parallel backends.
Runner = Callable[[Supernet, list[Arch]], np.ndarray]
# (supernet, the archive's best encodings, TrainConfig as a dict, the teacher's encoding)
Adapter = Callable[[Supernet, np.ndarray, dict, np.ndarray], None]


@dataclass
class SearchResult:
    """The archive, the indices of its non-dominated entries (by the first metric), and one
    history record per iteration."""

    archive: Archive
    front: list[int]
    history: list[dict]
    hypervolume: float
    seconds: float = 0.0
    models: list = field(default_factory=list)  # nat.handback.FrontModel, smallest first
    timing: dict | None = None  # the limit, the plan and each stage's seconds (nat.run)

    @property
    def X(self) -> np.ndarray:
        return self.archive.X[self.front]

    @property
    def F(self) -> np.ndarray:
        return self.archive.objectives(("params", "macs"))[self.front]

    def front_archs(self) -> list[Arch]:
        return [self.archive.space.decode(x) for x in self.X]


def categorical_sampler(space: SearchSpace, X: np.ndarray) -> Callable[[np.random.Generator], Arch]:
    """Draws architectures variable by variable from the choices' frequencies in ``X`` (one
    pseudo-count per choice, so nothing is ruled out); then repairs them."""
    probs = []
    for v in range(space.n_var):
        counts = np.bincount(X[:, v], minlength=space.upper[v] + 1).astype(float) + 1.0
        probs.append(counts / counts.sum())

    def sample(rng: np.random.Generator) -> Arch:
        x = np.array([rng.choice(len(p), p=p) for p in probs])
        return space.decode(space.repair(x))

    return sample


def sample_feasible(
    budgets: Budgets, n: int, rng: np.random.Generator, exclude: Archive
) -> np.ndarray:
    """Up to ``n`` distinct random encodings within budget and not in ``exclude``."""
    space, found, seen = budgets.space, [], set()
    for _ in range(50 if n > 0 else 0):
        X = space.sample(max(4 * n, 64), rng)
        for x in X[budgets.feasible(X)]:
            key = tuple(x)
            if key not in seen and x not in exclude:
                seen.add(key)
                found.append(x)
            if len(found) == n:
                return np.array(found)
    return np.array(found, dtype=np.int64).reshape(-1, space.n_var)


def _spread(F: np.ndarray, k: int) -> np.ndarray:
    """k indices spread evenly in value along the first complexity objective of a front: the
    point nearest each of k evenly spaced sizes, each point taken once. Evenly in rank would
    follow where the optimiser's population crowds (on CIFAR-10 at 300k, all 8 candidates
    of an iteration fell within 1 % of the smallest subnet's size)."""
    order = np.argsort(F[:, 1], kind="stable")
    if len(order) <= k:
        return order
    size = F[order, 1]
    free = np.ones(len(order), bool)
    for target in np.linspace(size[0], size[-1], k):
        free[np.flatnonzero(free)[np.argmin(np.abs(size[free] - target))]] = False
    return order[~free]


def hypervolume(archive: Archive, budgets: Budgets, metrics: tuple[str, ...]) -> float:
    """HV of the archive's feasible entries: error and each metric over its budget scale,
    against the fixed reference point 1.01 (so runs with the same budgets compare)."""
    feasible = budgets.feasible(archive.X) if len(archive) else np.zeros(0, bool)
    if not feasible.any():
        return 0.0
    F = archive.objectives(metrics)[feasible]
    F[:, 1:] /= np.array([budgets.scale[m] for m in metrics])
    return float(HV(ref_point=np.full(F.shape[1], 1.01))(F))


class NATSearch:
    """One search run. ``runner`` evaluates architectures (default: in this process)."""

    def __init__(
        self,
        supernet: Supernet,
        data: DataSplits,
        config: SearchConfig,
        out_dir: str | Path | None = None,
        runner: Runner | None = None,
        progress: bool = True,
        metadata: dict | None = None,
        adapter: Adapter | None = None,
        device: torch.device | None = None,
        pretrain: TrainConfig | None = None,
        budgets: Budgets | None = None,
        saved: Snapshot | None = None,
    ) -> None:
        """``budgets``: the config's, if built already (for this space); ``saved``: a snapshot
        to continue from (:meth:`resume`)."""
        self.supernet, self.data, self.config = supernet, data, config
        self.device = device or torch.device("cpu")  # of adaptation and evaluation
        self.adapter = adapter
        self.metadata = metadata or {}
        self.space = supernet.space
        self.out_dir = Path(out_dir) if out_dir is not None else None
        log = (lambda text: tqdm.write(text)) if progress else None
        if budgets is not None and budgets.space != self.space:
            where = f"the search saved in {self.out_dir}" if saved is not None else "the supernet"
            raise ValueError(
                f"{where} is over {self.space!r}, the run's budgets over {budgets.space!r}: "
                "run it with the space it was started with, or pass --overwrite to start again"
            )
        if budgets is None:
            table = latency_table_of(config, self.space, supernet.num_classes, log)
            budgets = Budgets.of(config, self.space, supernet.num_classes, table)
        self.budgets, self.latency = budgets, budgets.latency
        self.runner = runner or SubnetEvaluator(
            data, config.bn_batches, config.batch_size, config.seed, progress, self.device
        )
        self.archive = Archive(self.space, supernet.num_classes, self.latency, config.precision)
        self.history: list[dict] = []
        self.progress, self.rng = progress, np.random.default_rng(config.seed)
        if saved is not None:
            saved.archive.attach_latency(self.latency)
            self.archive, self.history = saved.archive, saved.history
            self.rng.bit_generator.state = saved.rng_state
        # The pre-training recipe: adaptation and hand-back distil from the same teacher, and
        # adaptation trains the same anchors, as pre-training did.
        self.pretrain = pretrain or TrainConfig()
        self.budget: SearchBudget | None = None  # run()'s, under a time limit
        self.adapt_seconds = 0.0  # under a time limit, this iteration's adaptation
        self.evaluations, self.evaluation_seconds = 0, 0.0  # as measured in this process

    def teacher(self) -> Arch:
        """The subnet the others are distilled from: the largest within
        the pre-training recipe's ``teacher_multiple`` × the budgets."""
        return self.budgets.teacher(self.pretrain.teacher_multiple)

    # -- steps ---------------------------------------------------------------------------
    def _evaluate(self, X: np.ndarray) -> np.ndarray:
        archs = [self.space.decode(x) for x in X]
        start = time.perf_counter()
        accuracy = np.asarray(self.runner(self.supernet, archs), dtype=np.float64)
        self.evaluations += len(archs)
        self.evaluation_seconds += time.perf_counter() - start
        return accuracy

    def heuristic_seeds(self) -> np.ndarray:
        """The Feillet heuristic's architecture (widths snapped to the space) per budget, from
        the family's reference network (kernel 3): scaling the space's largest (kernel 7)
        instead left the seed at 69 % of a 300k budget on CIFAR-10's mbv2 space."""
        # Feillet scales by the budgets that are analytic (params, MACs, memory bytes), each
        # seed by the tightest of them; a run with none (latency only, or unbounded) scales
        # by its first such objective, else by MACs, and keeps the seeds its budgets admit.
        limits, precision = self.budgets.cost_limits, self.budgets.precision
        fractions = self.budget.seed_fractions if self.budget is not None else SEED_FRACTIONS
        if not limits or self.config.heuristic_budgets:
            metric = next((m for m in limits), None) or next(
                (m for m in self.config.metrics if m in COST_METRICS), "macs"
            )
            limit = limits.get(metric) or self.budgets.scale[metric]
            sizes = self.config.heuristic_budgets or [f * limit for f in fractions]
            targets = [{metric: b} for b in sizes]
        else:
            targets = [{m: v * f for m, v in limits.items()} for f in fractions]
        seeds = []
        for target in targets:
            try:
                scaled = feillet_within(target, self.supernet.num_classes, self.space, precision)
            except ValueError:
                continue  # a quarter of a tight budget may fit nothing: skip that seed
            x = self.space.encode(scaled.arch)
            if self.budgets.feasible(x[None])[0]:
                seeds.append(x)
        return np.array(seeds, dtype=np.int64).reshape(-1, self.space.n_var)

    def warm_start_seeds(self) -> np.ndarray:
        """The front (error against params) of the run in ``config.warm_start``, encoded in
        this space; its architectures this space cannot hold are left out. Scored again on
        this data by :meth:`initialise`, as Archai's initial population and Optuna's
        ``enqueue_trial`` do."""
        X = np.zeros((0, self.space.n_var), dtype=np.int64)
        if self.config.warm_start is None:
            return X
        previous = Archive.load(Path(self.config.warm_start) / "archive.json")
        seeds = []
        for i in previous.front(("params",)):
            try:
                arch = previous.space.decode(np.asarray(previous.entries[i].x))
                seeds.append(self.space.encode(arch))
            except ValueError:
                continue  # a choice this space does not offer
        return np.array(seeds, dtype=np.int64).reshape(-1, self.space.n_var) if seeds else X

    def initialise(self) -> None:
        """Design of experiments: random feasible subnets, the smallest, the largest within
        the budgets (the space's largest when it fits) and the heuristic's; evaluated for
        real."""
        space, groups = self.space, []
        groups.append(("smallest", self.space.encode(space.smallest())[None]))
        # With a budget, the largest within it is the sandwich rule's anchor, trained on every
        # step: the best-trained subnet at the front's top end. Random draws rarely reach it
        # (on the README's digits run the largest drawn was 234k-398k of 400k, 1-5 points below).
        groups.append(("largest", self.space.encode(self.budgets.largest())[None]))
        groups.append(("heuristic", self.heuristic_seeds()))
        groups.append(("warm-start", self.warm_start_seeds()))
        doe_size = self.budget.doe_size if self.budget is not None else self.config.doe_size
        groups.append(("doe", sample_feasible(self.budgets, doe_size, self.rng, self.archive)))
        seen: set[tuple] = set()
        for source, X in groups:
            keep = []
            for x in X:
                if self.budgets.feasible(x[None])[0] and tuple(x) not in seen:
                    seen.add(tuple(x))
                    keep.append(x)
            if keep:
                X = np.array(keep)
                self.archive.add(X, self._evaluate(X), source, 0)
        self._save(supernet=True)

    def adapt(self, iteration: int) -> None:
        """Fine-tune the supernet on the archive's best architectures, then re-evaluate."""
        metrics = self.config.metrics
        top = self.archive.X[rank_order(self.archive.objectives(metrics))[: self.config.adapt_top]]
        config = TrainConfig(
            epochs=self.config.adapt_epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            warmup_epochs=0,
            smallest_anchor=self.pretrain.smallest_anchor,
            seed=self.config.seed * 1000 + iteration,
        )
        teacher, anchor = self.teacher(), self.budgets.anchor(self.pretrain.anchor_multiple)
        seconds = self.adapt_seconds if self.budget is not None else None
        if self.adapter is not None:  # e.g. data-parallel on a Ray cluster
            encode = self.space.encode
            self.adapter(self.supernet, top, asdict(config), encode(teacher), encode(anchor))
        else:
            train_supernet(
                self.supernet,
                self.data,
                config,
                sampler=categorical_sampler(self.space, top),
                progress=self.progress,
                teacher=teacher,
                anchor=anchor,
                seconds=seconds,
                device=self.device,
            )
            self.supernet.cpu()
        self.supernet.eval()
        self.archive.set_accuracy(self._evaluate(self.archive.X))
        self._save(supernet=True)

    def propose(self, iteration: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Fit the surrogate, run NSGA-II on it, and choose the candidates to evaluate."""
        cfg = self.config
        start = time.perf_counter()
        surrogate = make_surrogate(cfg.surrogate, self.space, seed=cfg.seed + iteration)
        surrogate.fit(self.archive.X, self.archive.accuracy)
        log = {
            "surrogate": getattr(surrogate, "chosen", cfg.surrogate),
            "surrogate_cv_tau": _cv_tau(surrogate),
            "surrogate_s": time.perf_counter() - start,
        }
        start = time.perf_counter()
        problem = SurrogateProblem(self.budgets, surrogate.predict, cfg.metrics)
        front = self.archive.front(cfg.metrics)
        X0 = self.archive.X[front][: cfg.population]
        fill = sample_feasible(self.budgets, cfg.population - len(X0), self.rng, self.archive)
        X0 = np.vstack([X0, fill]) if len(fill) else X0
        X, F, G = run_nsga2(
            problem, X0, cfg.generations, cfg.seed * 1000 + iteration, cfg.population
        )
        log["nsga2_s"] = time.perf_counter() - start
        new = np.array(
            [
                (G <= 0).all() and x not in self.archive
                for x, G in zip(X, G if G.size else np.zeros((len(X), 0)), strict=True)
            ],
            bool,
        )
        X, F = X[new], F[new]
        _, unique = np.unique(X, axis=0, return_index=True)
        X, F = X[np.sort(unique)], F[np.sort(unique)]
        chosen: list[int] = []
        if len(X):
            fronts = NonDominatedSorting().do(F)
            for fr in fronts:  # the predicted front first, then the next ones
                picks = np.asarray(fr)[_spread(F[fr], cfg.candidates - len(chosen))]
                chosen.extend(int(i) for i in picks)
                if len(chosen) >= cfg.candidates:
                    break
        X_new, predicted = X[chosen], 1.0 - F[chosen, 0]
        missing = cfg.candidates - len(X_new)
        if missing > 0:  # the optimiser found too few new feasible designs: explore at random
            extra = sample_feasible(self.budgets, missing, self.rng, self.archive)
            extra = np.array([x for x in extra if not any((x == X_new).all(1))]).reshape(
                -1, self.space.n_var
            )
            X_new = np.vstack([X_new, extra])
            predicted = np.concatenate(
                [predicted, surrogate.predict(extra) if len(extra) else np.zeros(0)]
            )
        return X_new, predicted, log

    def step(self, iteration: int) -> dict:
        start = time.perf_counter()
        record: dict = {"iteration": iteration}
        t = time.perf_counter()
        adapting = self.config.adapt_epochs > 0
        if self.budget is not None:
            adapting = adapting and self.adapt_seconds > 0
        if adapting:
            self.adapt(iteration)
        record["adapt_s"] = time.perf_counter() - t
        X_new, predicted, log = self.propose(iteration)
        record.update(log)
        t = time.perf_counter()
        accuracy = self._evaluate(X_new)
        record["evaluate_s"] = time.perf_counter() - t
        self.archive.add(X_new, accuracy, "search", iteration)
        metrics = rank_metrics(accuracy, predicted) if len(X_new) > 1 else {}
        record.update({f"new_{k}": v for k, v in metrics.items()})
        record["evaluated"] = len(X_new)
        record["archive_size"] = len(self.archive)
        record["hv"] = hypervolume(self.archive, self.budgets, self.config.metrics)
        front = self.archive.front(self.config.metrics)
        record["best_accuracy"] = float(self.archive.accuracy[front].max())
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self._save()
        return record

    def run(self, budget: SearchBudget | None = None) -> SearchResult:
        """Run the remaining iterations (all of them, unless resumed); under a time limit,
        as many as ``budget`` allows."""
        self.budget = budget
        if not len(self.archive):
            self.initialise()
            hv = hypervolume(self.archive, self.budgets, self.config.metrics)
            best, size = float(self.archive.accuracy.max()), len(self.archive)
            self.history.append(
                {"iteration": 0, "archive_size": size, "hv": hv, "best_accuracy": best}
            )
            self._snapshot(0)
        first = self.history[-1]["iteration"] + 1
        last = self.config.iterations if self.budget is None else self.budget.iterations
        bar = tqdm(range(first, last + 1), desc="search", disable=not self.progress)
        for iteration in bar:
            if not self._time_for_iteration():
                tqdm.write(f"search: no time left for iteration {iteration}; stopping")
                break
            r = self.step(iteration)
            self._snapshot(iteration)
            tqdm.write(
                f"iteration {iteration}: HV {r['hv']:.4f}, best accuracy "
                f"{r['best_accuracy']:.2%}, archive {r['archive_size']}, surrogate "
                f"{r['surrogate']} (tau {r.get('new_kendall_tau', float('nan')):.2f} on new), "
                f"{r['seconds']:.1f} s"
            )
        return self.result()

    def _time_for_iteration(self) -> bool:
        """Under a time limit, whether one more iteration fits before the search's deadline,
        at the measured evaluation time (its re-evaluation of the archive and its candidates);
        its adaptation is shortened to what is left, and dropped below a quarter of the
        planned one."""
        b = self.budget
        if b is None:
            return True
        left = b.deadline - time.perf_counter()
        # The mean of this search's own evaluations, once there are some: the plan's figure
        # is an estimate from two subnets.
        each = b.evaluation_seconds
        if self.evaluations:
            each = self.evaluation_seconds / self.evaluations
        plain = self.config.candidates * each
        self.adapt_seconds = 0.0
        if b.adapt_seconds > 0:
            adapt = left - plain - len(self.archive) * each
            if adapt >= MIN_ADAPT_SHARE * b.adapt_seconds:
                self.adapt_seconds = min(b.adapt_seconds, adapt)
        return self.adapt_seconds > 0 or plain <= left

    # -- resuming ---------------------------------------------------------------------------
    def _snapshot(self, iteration: int) -> None:
        """Everything a resumed run needs, at an iteration boundary (:mod:`.state`)."""
        if self.out_dir is not None:
            state = self.rng.bit_generator.state
            write_snapshot(
                self.out_dir / "resume", iteration, self.supernet, state, self.archive, self.history
            )

    @classmethod
    def resume(
        cls, out_dir: str | Path, data: DataSplits, config: SearchConfig, **options: Any
    ) -> NATSearch:
        """The search saved in ``out_dir`` with ``config``, at its last completed iteration.
        ``options``: the other keywords of :class:`NATSearch` (a runner, budgets...)."""
        saved = read_snapshot(Path(out_dir) / "resume")
        return cls(saved.supernet, data, config, out_dir, saved=saved, **options)

    def result(self) -> SearchResult:
        feasible = self.budgets.feasible(self.archive.X)
        front = [i for i in self.archive.front(self.config.metrics) if feasible[i]]
        hv = hypervolume(self.archive, self.budgets, self.config.metrics)
        return SearchResult(self.archive, front, self.history, hv)

    def _save(self, supernet: bool = False) -> None:
        """Rewrite archive.json (after every evaluation batch) and, when its weights changed,
        the supernet checkpoint."""
        if self.out_dir is None:
            return
        config = asdict(self.config)
        path = self.out_dir / "archive.json"
        self.archive.save(path, config=config, **self.metadata, history=self.history)
        if supernet:
            save_supernet(self.out_dir / "supernet.pt", self.supernet)


def _cv_tau(surrogate) -> float:
    scores = getattr(surrogate, "cv_scores", None)
    chosen = getattr(surrogate, "chosen", None)
    if scores and chosen in scores:
        return float(scores[chosen]["tau_mean"])
    return float("nan")
