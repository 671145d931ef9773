"""1. Search quality: NAT against NAT without adaptation, NSGA-II on real evaluations, Optuna's
multi-objective NSGA-II and TPE samplers, random search (all with the same number of real
evaluations) and the heuristics, by hypervolume.

Every method of a seed measures subnets on that seed's data split, the one a NAT run with
that seed uses; all start from the one pre-trained supernet."""

from __future__ import annotations

import json
import time

import numpy as np
from pymoo.core.problem import Problem
from pymoo.termination.default import DefaultMultiObjectiveTermination

from nat.engine.archive import Archive
from nat.engine.heuristic import depth_only, feillet, width_only
from nat.engine.loop import hypervolume, sample_feasible
from nat.engine.problem import Budgets, make_nsga2
from nat.io.files import mean_std

from .common import Bench, Plot, Result, Table, pm

METHODS = [
    "NAT",
    "NAT without adaptation",
    "NSGA-II, real evaluations",
    "Optuna NSGA-II",
    "Optuna TPE",
    "random search",
]
HEURISTICS = {"heuristic (Feillet)": feillet, "width-only": width_only, "depth-only": depth_only}


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
        self.budgets, self.supernet, self.evaluator = budgets, supernet, evaluator
        self.limit = limit
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
    evaluator = bench.evaluator(seed)
    problem = RealProblem(budgets, bench.pretrained(), evaluator, n)
    rng = np.random.default_rng(seed + 20_000)
    X0 = sample_feasible(budgets, bench.s.real_population, rng, Archive(bench.space, 10))
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


def optuna_search(bench: Bench, n: int, seed: int, sampler: str) -> Archive:
    """Optuna's ``sampler`` ("NSGA-II" or "TPE", multi-objective, the budget as the
    trial's constraints) on the integer encoding, the Feillet architecture enqueued first, until
    ``n`` distinct feasible subnets are measured with the pre-trained supernet. Repeats are
    answered from memory; infeasible designs are not measured and count as chance-less, as in
    :class:`RealProblem`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budgets, space = bench.budgets, bench.space
    evaluator, supernet = bench.evaluator(seed), bench.pretrained()

    samplers = {
        "NSGA-II": lambda: optuna.samplers.NSGAIISampler(
            population_size=bench.s.real_population, seed=seed
        ),
        "TPE": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
    }
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=samplers[sampler]())
    names = [f"x{i}" for i in range(space.n_var)]
    heuristic = feillet(float(bench.s.max_params), None, budgets.num_classes, space=space).arch
    study.enqueue_trial(dict(zip(names, map(int, space.encode(heuristic)), strict=True)))
    archive, known = Archive(space, budgets.num_classes), {}
    for _ in range(max(1000, 50 * n)):  # trials; a space too small to hold n designs stops here
        if len(known) >= n:
            break
        trial = study.ask()
        raw = [
            trial.suggest_int(k, int(lo), int(hi))
            for k, lo, hi in zip(names, space.lower, space.upper, strict=True)
        ]
        x = space.repair(np.array([raw]))[0]
        g = budgets.violation(x[None])[0]
        for i, v in enumerate(g):  # the budgets, read by both samplers (Optuna 5)
            trial.set_constraint(f"budget{i}", float(v))
        key = tuple(int(v) for v in x)
        if (g <= 0).all() and key not in known:
            (known[key],) = evaluator(supernet, [space.decode(x)])
            archive.add(x[None], [known[key]], f"optuna-{sampler.lower()}", 0)
        params = space.complexity(x[None], budgets.num_classes)[0][0]
        study.tell(trial, [1.0 - known.get(key, 0.0), params / budgets.scale["params"]])
    return archive


def _measured(bench: Bench, X: np.ndarray, source: str, seed: int) -> Archive:
    """An archive of ``X``, measured with the pre-trained supernet on seed ``seed``'s split."""
    data = bench.data
    archive = Archive(bench.space, data.num_classes)
    accuracy = bench.evaluator(seed, data)(bench.pretrained(), [bench.space.decode(x) for x in X])
    archive.add(X, accuracy, source, 0)
    return archive


def random_search(bench: Bench, n: int, seed: int) -> Archive:
    """``n`` distinct random feasible subnets, measured with the pre-trained supernet."""
    empty = Archive(bench.space, bench.data.num_classes)
    X = sample_feasible(bench.budgets, n, np.random.default_rng(seed + 10_000), empty)
    return _measured(bench, X, "random", seed)


def heuristic_archive(bench: Bench, method, seed: int) -> Archive:
    """The heuristic's architectures at log-spaced parameter budgets up to the budget."""
    space, num_classes = bench.space, bench.data.num_classes
    smallest = space.complexity(space.smallest(), num_classes)[0]
    X = []
    for budget in np.geomspace(smallest, bench.s.max_params, bench.s.heuristic_budgets):
        try:
            x = space.encode(method(float(budget), None, num_classes, space=space).arch)
        except ValueError:
            continue  # nothing of this method fits so small a budget
        if not any((x == y).all() for y in X):
            X.append(x)
    return _measured(bench, np.array(X), method.__name__, seed)


def _scored(archive: Archive, budgets: Budgets, seconds: float) -> dict:
    front = [i for i in archive.front(("params",)) if budgets.feasible(archive.X[i][None])[0]]
    return {
        "hv": hypervolume(archive, budgets, ("params",)),
        "evaluated": len(archive),
        "seconds": seconds,
        "front": [[archive.entries[i].params, archive.entries[i].accuracy] for i in front],
    }


def _one_seed(bench: Bench, seed: int) -> dict:
    budgets = bench.budgets
    folder, nat_seconds = bench.nat_run(seed)
    doc = json.loads((folder / "archive.json").read_text())
    row = {"NAT": _scored(Archive.from_dict(doc), budgets, nat_seconds)}
    n = len(doc["entries"])
    runs = {
        "NAT without adaptation": lambda: bench.nat_search(seed, adapt_epochs=0).archive,
        "NSGA-II, real evaluations": lambda: nsga2_on_real_evaluations(bench, n, seed),
        "Optuna NSGA-II": lambda: optuna_search(bench, n, seed, "NSGA-II"),
        "Optuna TPE": lambda: optuna_search(bench, n, seed, "TPE"),
        "random search": lambda: random_search(bench, n, seed),
    }
    for label, method in HEURISTICS.items():
        runs[label] = lambda method=method: heuristic_archive(bench, method, seed)
    for label, make in runs.items():
        start = time.perf_counter()
        archive = make()
        row[label] = _scored(archive, budgets, time.perf_counter() - start)
    fronts = {label: r.pop("front") for label, r in row.items()}
    print(f"seed {seed}: " + ", ".join(f"{k} HV {v['hv']:.4f}" for k, v in row.items()), flush=True)
    return {"seed": seed, "methods": row, "fronts": fronts}


def bench_search(bench: Bench) -> Result:
    s = bench.s
    per_seed = [_one_seed(bench, seed) for seed in s.seeds]

    def stat(label: str, key: str, digits: int) -> str:
        return pm(*mean_std([p["methods"][label][key] for p in per_seed]), digits)

    rows = [
        [label, stat(label, "hv", 4), stat(label, "evaluated", 0), stat(label, "seconds", 0)]
        for label in METHODS + list(HEURISTICS)
    ]

    def ratio(other: str) -> list[float]:
        return [p["methods"]["NAT"]["hv"] / p["methods"][other]["hv"] for p in per_seed]

    ratio_random, ratio_nsga = ratio("random search"), ratio("NSGA-II, real evaluations")
    folder, _ = bench.nat_run(s.seeds[0])
    history = json.loads((folder / "archive.json").read_text())["history"]
    timings = ("adapt_s", "surrogate_s", "nsga2_s", "evaluate_s", "seconds")
    iterations = [
        [
            h["iteration"],
            h["archive_size"],
            f"{h['hv']:.4f}",
            h["surrogate"],
            f"{h['surrogate_cv_tau']:.2f}",
            f"{h.get('new_kendall_tau', float('nan')):.2f}",
            *(f"{h[k]:.1f}" for k in timings),
        ]
        for h in history[1:]
    ]
    sections = [
        Table(
            f"Hypervolume, params budget {s.max_params:,.0f}, {len(s.seeds)} seeds "
            "(error and params / budget; reference point 1.01)",
            ["method", "HV mean ± std", "subnets evaluated", "seconds"],
            rows,
        ),
        f"NAT / random search HV: {pm(*mean_std(ratio_random), 3)}; "
        f"NAT / NSGA-II on real evaluations: {pm(*mean_std(ratio_nsga), 3)}",
        Table(
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
            iterations,
        ),
    ]
    fronts = per_seed[0]["fronts"]
    return Result(
        data={
            "per_seed": per_seed,
            "nat_over_random": ratio_random,
            "nat_over_nsga2_real": ratio_nsga,
            "nat_history": history,
        },
        sections=sections,
        plots=[
            Plot("search_pareto.png", lambda ax: _draw_fronts(ax, fronts, s.max_params), (7, 4.5))
        ],
    )


def _draw_fronts(ax, fronts: dict, budget: float) -> None:
    for (label, points), marker in zip(fronts.items(), "os^v<>D", strict=False):
        if points:
            p = np.array(sorted(points))
            ax.step(p[:, 0] / 1e6, 100 * p[:, 1], where="post", marker=marker, ms=4, label=label)
    ax.axvline(budget / 1e6, color="grey", ls=":", lw=1)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
