"""4. Surrogate quality: each accuracy predictor's rank correlation and error on held-out
random subnets, against the size of the archive it is fitted on."""

from __future__ import annotations

import statistics
import time

import numpy as np

from nat.engine.surrogate import SURROGATES, make_surrogate, rank_metrics

from .common import Bench, Plot, Result, Table


def bench_surrogate(bench: Bench) -> Result:
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
    spread = 100 * float(np.std(y[test]))
    table = Table(
        f"Surrogates on {s.holdout} held-out random subnets: Kendall tau / RMSE (accuracy "
        f"points), mean of {s.repeats} draws of the training archive",
        ["archive size", *names, "adaptive chose"],
        rows,
    )
    note = f"Accuracy spread of the held-out subnets: std {spread:.1f} points (an RMSE to beat)."
    return Result(
        data={"results": results, "chosen": chosen, "holdout_std": spread / 100},
        sections=[table, note],
        plots=[Plot("surrogate.png", lambda ax: _draw_surrogates(ax, results, sizes))],
    )


def _draw_surrogates(ax, results: dict, sizes: list[int]) -> None:
    for name, by_size in results.items():
        tau = [statistics.fmean(m["kendall_tau"] for m in by_size[n]) for n in sizes]
        ax.plot(sizes, tau, marker="o", label=name, lw=2.5 if name == "adaptive" else 1.2)
    ax.set_xlabel("archive size (training points)")
    ax.set_ylabel("Kendall tau on held-out subnets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
