"""6. Cost growth: the time of one NAT iteration, part by part, against the archive size and
the NSGA-II population."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from nat.engine.loop import NATSearch

from .common import Bench, Result, Table

SPLIT = ("surrogate_s", "nsga2_s", "evaluate_s")


def _split(record: dict) -> dict:
    return {k: record[k] for k in SPLIT} | {"surrogate": record["surrogate"]}


def bench_growth(bench: Bench) -> Result:
    s = bench.s
    pool = bench.pool(max(s.archive_sizes))
    net = bench.pretrained()
    # An adaptation epoch costs what a pre-training epoch does, whatever the archive size.
    epoch_s = bench.pretrain_s / s.pretrain_epochs
    chunk_s = np.cumsum(pool["chunk_s"])
    base = replace(bench.spec(0).search, adapt_epochs=0)

    def one_step(n: int, population: int) -> dict:
        config = replace(base, population=population)
        search = NATSearch(copy.deepcopy(net), bench.data, config, progress=False)
        search.archive.add(pool["X"][:n], pool["accuracy"][:n], "pool", 0)
        return search.step(1)

    by_archive = []
    for n in s.archive_sizes:
        r = one_step(n, s.population)
        reeval = float(np.interp(n, 10 * np.arange(1, len(chunk_s) + 1), chunk_s))
        total = epoch_s + reeval + sum(r[k] for k in SPLIT)
        by_archive.append(
            {
                "archive": n,
                "adapt_epoch_s": epoch_s,
                "reevaluate_s": reeval,
                **_split(r),
                "total_s": total,
            }
        )
    n_mid = s.archive_sizes[len(s.archive_sizes) // 2]
    by_population = [{"population": p, **_split(one_step(n_mid, p))} for p in s.population_sizes]
    keys = ["adapt_epoch_s", "reevaluate_s", *SPLIT, "total_s"]
    sections = [
        Table(
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
        ),
        Table(
            f"Surrogate and NSGA-II against population size (archive {n_mid}, "
            f"{s.generations} generations; seconds)",
            ["population", "surrogate fit", "NSGA-II", f"evaluate {s.candidates}"],
            [[r["population"]] + [f"{r[k]:.2f}" for k in SPLIT] for r in by_population],
        ),
        f"The adaptation epoch ({epoch_s:.0f} s) is a pre-training epoch of this run, whose cost "
        "does not depend on the archive; re-evaluating an archive of n subnets is the measured "
        "time of evaluating the first n subnets of the pool.",
    ]
    return Result(
        data={"by_archive": by_archive, "by_population": by_population}, sections=sections
    )
