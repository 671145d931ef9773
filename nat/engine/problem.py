"""NSGA-II (pymoo) over a space's integer encoding, guided by an accuracy surrogate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize

from search_spaces import COST_METRICS, Arch, SearchSpace

from ..spec import METRICS, SearchConfig

if TYPE_CHECKING:
    from ..latency import LatencyTable

__all__ = [
    "BudgetError",
    "Budgets",
    "SpaceRepair",
    "SurrogateProblem",
    "make_nsga2",
    "run_nsga2",
]

_UNITS = {
    "params": "parameters",
    "macs": "MACs",
    "latency": "ms latency",
    "peak_memory": "bytes of peak memory",
    "model_size": "bytes of model",
}


class BudgetError(ValueError):
    """A budget no subnet of the space can meet; ``metric`` ("params", "macs" or "latency")
    says which, so that a caller names its own setting without reading the message."""

    def __init__(self, metric: str, message: str) -> None:
        super().__init__(message)
        self.metric = metric


class Budgets:
    """Upper bounds on parameters, MACs per image, milliseconds at batch 1, bytes of peak
    activation memory and bytes of model at ``precision`` (None: unbounded), and the scale
    each complexity objective is divided by (the budget, else the space's largest value).
    ``latency``: the table that predicts latency (``nat.latency``), needed for a latency
    budget or objective."""

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        max_params: float | None = None,
        max_macs: float | None = None,
        max_latency: float | None = None,
        latency: LatencyTable | None = None,
        max_peak_memory: float | None = None,
        max_model_size: float | None = None,
        precision: str = "fp32",
    ) -> None:
        self.space, self.num_classes, self.latency = space, num_classes, latency
        self.precision = precision
        if max_latency is not None and latency is None:
            raise BudgetError(
                "latency", "a latency budget needs a latency table (nat.latency.load_or_build)"
            )
        self.limits = {
            "params": max_params,
            "macs": max_macs,
            "latency": max_latency,
            "peak_memory": max_peak_memory,
            "model_size": max_model_size,
        }
        ends = self.values(
            np.stack([space.encode(space.largest()), space.encode(space.smallest())])
        )
        for metric, limit in self.limits.items():
            if limit is not None and limit < ends[metric][1]:
                smallest = ends[metric][1]
                raise BudgetError(
                    metric,
                    f"budget of {_amount(limit, metric)} is below the smallest {space.name} "
                    f"subnet's {_amount(smallest, metric)}: raise it or use a smaller space",
                )
        self.scale = {m: float(self.limits[m] or ends[m][0]) for m in ends}

    @classmethod
    def of(cls, config: SearchConfig, space: SearchSpace, num_classes: int, latency=None):
        """The budgets a search's settings ask for."""
        return cls(
            space,
            num_classes,
            config.max_params,
            config.max_macs,
            config.max_latency,
            latency,
            config.max_peak_memory,
            config.max_model_size,
            config.precision,
        )

    def values(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each complexity metric of the rows of ``X``: params, MACs and the bytes of peak
        memory and of the model analytically, latency (ms) predicted from the table when
        there is one."""
        X = np.atleast_2d(X)
        costs = self.space.costs(X, self.num_classes)
        values = {m: costs.metric(m, self.precision) for m in COST_METRICS}
        if self.latency is not None:
            values["latency"] = self.latency.predict(X)
        return values

    @property
    def cost_limits(self) -> dict[str, float]:
        """The budgets given on the metrics that are analytic in the architecture."""
        return {m: v for m, v in self.limits.items() if v is not None and m in COST_METRICS}

    @property
    def constrained(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if self.limits[m] is not None)

    def violation(self, X: np.ndarray) -> np.ndarray:
        """(n, number of budgets) relative excess over each budget; feasible when all <= 0."""
        values = self.values(X)
        cols = [(values[m] - self.limits[m]) / self.limits[m] for m in self.constrained]
        return np.stack(cols, axis=1) if cols else np.zeros((len(np.atleast_2d(X)), 0))

    def feasible(self, X: np.ndarray, multiple: float = 1.0) -> np.ndarray:
        """Which rows of ``X`` fit ``multiple`` × every budget."""
        return np.all(self.violation(X) <= multiple - 1, axis=1)

    def teacher(self, multiple: float, grow_back: bool = False) -> Arch:
        """The distillation teacher for training toward these budgets: the space's largest
        subnet if it fits ``multiple`` × every budget, else the largest shrunk one choice at a
        time until it fits, each step taking the choice that loses the least log-size
        (params and MACs) per unit of excess removed; with ``grow_back``, then grown back
        wherever it still fits. A teacher ten times over the budget costs ten times the
        compute and teaches subnets what they cannot hold (issue 10). The teacher is not
        grown back (the anchor is): at 1M on CIFAR-10 growing back gave the last stages
        kernel 7, cost 13 % more pre-training time and left inherited accuracy less tied to
        size (Spearman 0.40 against 0.63), for the same handed-back model (docs/benchmarks.md
        §7)."""
        space = self.space
        x = space.encode(space.largest())
        if multiple <= 0 or not self.constrained:
            return space.decode(x)

        def excess(X: np.ndarray) -> np.ndarray:
            return np.max(self.violation(X) - (multiple - 1), axis=1)

        def log_size(X: np.ndarray) -> np.ndarray:
            return np.log(np.stack(self.space.complexity(X, self.num_classes))).sum(0)

        while (now := excess(x[None])[0]) > 0:
            steps = np.flatnonzero(x > space.lower)
            candidates = np.repeat(x[None], len(steps), axis=0)
            candidates[np.arange(len(steps)), steps] -= 1
            candidates = space.repair(candidates)
            removed = now - excess(candidates)
            lost = log_size(x[None])[0] - log_size(candidates)
            useful = removed > 0
            if not useful.any():  # cannot happen: the smallest subnet fits (checked above)
                raise ValueError(f"no subnet fits {multiple} x the budgets")
            cost = np.where(useful, lost / np.where(useful, removed, 1), np.inf)
            x = candidates[int(np.argmin(cost))]
        # Shrinking can overshoot (one step of a late stage's width frees more than the
        # excess): grow back, most log-size first, every choice that still fits.
        while grow_back and len(steps := np.flatnonzero(x < space.upper)):
            candidates = np.repeat(x[None], len(steps), axis=0)
            candidates[np.arange(len(steps)), steps] += 1
            candidates = space.repair(candidates)
            gained = np.where(
                excess(candidates) <= 0, log_size(candidates) - log_size(x[None])[0], 0.0
            )
            if not (gained > 0).any():
                break
            x = candidates[int(np.argmax(gained))]
        return space.decode(x)

    def largest(self, multiple: float = 1.0) -> Arch:
        """The largest subnet within ``multiple`` × every budget: the space's largest when
        it fits or without budgets."""
        return self.teacher(multiple, grow_back=True)

    def anchor(self, multiple: float) -> Arch:
        """The subnet the sandwich rule trains on every step beside the teacher: the largest
        within ``multiple`` × every budget, where a search returns its subnets; the space's
        smallest (BigNAS) without budgets or with ``multiple`` 0."""
        if multiple <= 0 or not self.constrained:
            return self.space.smallest()
        return self.largest(multiple)

    def sampler(self, multiple: float = 1.0) -> Callable[[np.random.Generator], Arch]:
        """Draws subnets within ``multiple`` × every budget, uniformly in size rather than in
        the encoding (AttentiveNAS / AlphaNet draw uniformly in FLOPs): a target size
        between the smallest subnet's and ``multiple`` × the budget, then the closest of 256
        random subnets that fit. Uniform draws in the encoding pile up mid-range and leave the
        subnets near the budget, the ones a search returns, undertrained. Size is the largest
        ratio to a budget; without budgets, the draw is uniform in the encoding."""
        space = self.space
        if not self.constrained or multiple <= 0:
            return lambda rng: space.decode(space.sample(1, rng)[0])
        low = float(np.max(self.violation(space.encode(space.smallest())[None]))) + 1

        def sample(rng: np.random.Generator) -> Arch:
            target = rng.uniform(low, multiple)
            for _ in range(25):
                X = space.sample(256, rng)
                size = np.max(self.violation(X), axis=1) + 1
                fits = np.flatnonzero(size <= multiple)
                if len(fits):
                    return space.decode(X[fits[np.argmin(np.abs(size[fits] - target))]])
            return space.smallest()

        return sample


class SpaceRepair(Repair):
    """The space's own repair: rounds, clips and canonicalises inactive genes."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem, X, **kwargs):
        return self.space.repair(X).astype(float)


class SurrogateProblem(Problem):
    """Objectives: predicted error, then each complexity metric scaled by its budget.
    Constraints: ``G = (value - budget) / budget <= 0`` for each budget given."""

    def __init__(
        self,
        budgets: Budgets,
        predict_accuracy: Callable[[np.ndarray], np.ndarray],
        metrics: tuple[str, ...],
    ) -> None:
        space = budgets.space
        super().__init__(
            n_var=space.n_var,
            n_obj=1 + len(metrics),
            n_ieq_constr=len(budgets.constrained),
            xl=space.lower.astype(float),
            xu=space.upper.astype(float),
            vtype=int,
        )
        self.budgets, self.predict_accuracy, self.metrics = budgets, predict_accuracy, metrics

    def _evaluate(self, X, out, *args, **kwargs):
        X = self.budgets.space.repair(X)
        values = self.budgets.values(X)
        out["F"] = np.column_stack(
            [1.0 - self.predict_accuracy(X)]
            + [values[m] / self.budgets.scale[m] for m in self.metrics]
        )
        if self.n_ieq_constr:
            out["G"] = self.budgets.violation(X)


def make_nsga2(space: SearchSpace, initial: np.ndarray, pop_size: int) -> NSGA2:
    """pymoo's NSGA-II over ``space``'s integer encoding: SBX and polynomial mutation rounded
    to integers, then the space's repair; duplicates eliminated; starts from ``initial``
    (seeds first, as many rows as ``pop_size``)."""
    return NSGA2(
        pop_size=pop_size,
        sampling=initial.astype(float),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        repair=SpaceRepair(space),
        eliminate_duplicates=True,
    )


def run_nsga2(
    problem: SurrogateProblem, initial: np.ndarray, generations: int, seed: int, pop_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run NSGA-II from the ``initial`` population (seeds first, as many rows as pop_size);
    returns the final population's X (ints), F and constraint violation G."""
    algorithm = make_nsga2(problem.budgets.space, initial, pop_size)
    result = minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    pop = result.pop
    G = pop.get("G") if problem.n_ieq_constr else np.zeros((len(pop), 0))
    return problem.budgets.space.repair(pop.get("X")), pop.get("F"), G


def _amount(value: float, metric: str) -> str:
    number = f"{value:.3g}" if metric == "latency" else f"{value:,.0f}"
    return f"{number} {_UNITS[metric]}"
