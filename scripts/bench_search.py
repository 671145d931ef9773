"""Search quality on a CIFAR-10 subset: NAT (with and without supernet adaptation) against
random search with as many distinct subnets evaluated, and the best searched subnet against
the Feillet heuristic at three parameter budgets. Also prints the surrogate's tau and the
wall time split of each iteration.

    python scripts/bench_search.py                       # CIFAR-10 archive next to the repo
    python scripts/bench_search.py --data path/to/cifar10-train-jpeg.tar.gz --seeds 0 1

All methods of one seed start from the same pre-trained supernet and use the same splits,
BatchNorm batches and validation images; HV uses the reference point fixed by the budget.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import search_spaces
from nat.api import prepare_supernet
from nat.archive import Archive
from nat.data import load_dataset
from nat.engine import NATSearch, SearchConfig, _sample_feasible, hypervolume
from nat.evaluate import SubnetEvaluator
from nat.files import write_json
from nat.heuristic import feillet

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpeg.tar.gz"


def random_search(supernet, data, budgets, n: int, seed: int, bn_batches: int) -> Archive:
    """``n`` distinct random subnets within budget, evaluated with ``supernet`` as it is."""
    archive = Archive(supernet.space, supernet.num_classes)
    X = _sample_feasible(budgets, n, np.random.default_rng(seed + 10_000), archive)
    evaluator = SubnetEvaluator(data, bn_batches, seed=seed)
    archive.add(X, evaluator(supernet, [supernet.space.decode(x) for x in X]), "random", 0)
    return archive


def run_seed(args, seed: int, data) -> dict:
    options = {"resolutions": args.resolutions, "width_mults": args.width_mults}
    torch.manual_seed(seed)
    start = time.perf_counter()
    pretrained = prepare_supernet(
        data, args.space, options, None, args.pretrain_epochs, seed, progress=False
    )
    pretrain_s = time.perf_counter() - start
    out: dict = {"seed": seed, "pretrain_s": pretrain_s}
    runs = {}
    for label, adapt in (("nat", args.adapt_epochs), ("nat-no-adapt", 0)):
        config = SearchConfig(
            iterations=args.iterations,
            max_params=args.max_params,
            doe_size=args.doe_size,
            candidates=args.candidates,
            adapt_epochs=adapt,
            bn_batches=args.bn_batches,
            seed=seed,
        )
        search = NATSearch(copy.deepcopy(pretrained), data, config, progress=False)
        start = time.perf_counter()
        result = search.run()
        runs[label] = (search, result)
        out[label] = {
            "hv": result.hypervolume,
            "evaluated": len(result.archive),
            "seconds": time.perf_counter() - start,
            "history": result.history,
        }
    search, result = runs["nat"]
    rnd = random_search(
        pretrained, data, search.budgets, len(result.archive), seed, args.bn_batches
    )
    out["random"] = {"hv": hypervolume(rnd, search.budgets, ("params",)), "evaluated": len(rnd)}
    # Heuristic vs searched, both scored with the final (adapted) supernet.
    evaluator = SubnetEvaluator(data, args.bn_batches, seed=seed)
    rows = []
    for fraction in args.budget_fractions:
        budget = fraction * args.max_params
        h = feillet(budget, None, data.num_classes, space=search.space)
        h_acc = float(evaluator(search.supernet, [h.arch])[0])
        within = [e for e in result.archive.entries if e.params <= budget]
        best = max(within, key=lambda e: e.accuracy)
        rows.append(
            {
                "budget": budget,
                "heuristic_params": h.params,
                "heuristic_acc": h_acc,
                "searched_params": best.params,
                "searched_acc": best.accuracy,
            }
        )
    out["heuristic_vs_searched"] = rows
    return out


def _fmt(values: list[float], pct: bool = False) -> str:
    scale = 100 if pct else 1
    mean = statistics.fmean(values) * scale
    std = (statistics.pstdev(values) if len(values) > 1 else 0.0) * scale
    return f"{mean:.2f} ± {std:.2f}" if pct else f"{mean:.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--space", default="resnet")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[24, 28, 32])
    parser.add_argument("--width-mults", type=float, nargs="+", default=[0.125, 0.25, 0.375])
    parser.add_argument("--max-params", type=float, default=1.2e6)
    parser.add_argument("--budget-fractions", type=float, nargs=3, default=[0.25, 0.5, 1.0])
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--adapt-epochs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--doe-size", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="results/search.json")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"CIFAR-10 archive not found at {args.data}: pass --data")
    search_spaces.get(args.space)  # fail early on a bad name
    start = time.perf_counter()
    data = load_dataset(args.data, image_size=max(args.resolutions), subset=args.subset, seed=0)
    print(
        f"data: {len(data.train)} train / {len(data.val)} val images "
        f"({time.perf_counter() - start:.1f} s)"
    )
    results = [run_seed(args, seed, data) for seed in args.seeds]
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(args.out, {"args": vars(args), "results": results, "machine": machine})

    rows = []
    for label in ("nat", "nat-no-adapt", "random"):
        hv = [r[label]["hv"] for r in results]
        secs = statistics.fmean(r[label].get("seconds", 0.0) for r in results)
        rows.append([label, _fmt(hv), results[0][label]["evaluated"], f"{secs:.0f}"])
    _table(
        f"Hypervolume (params budget {args.max_params:,.0f}; reference point 1.01)",
        ["method", "HV mean ± std", "subnets evaluated", "seconds"],
        rows,
    )
    ratio = [r["nat"]["hv"] / r["random"]["hv"] for r in results]
    print(f"NAT / random HV ratio: {_fmt(ratio)}")

    rows = []
    for i in range(3):
        per_seed = [r["heuristic_vs_searched"][i] for r in results]
        first = per_seed[0]
        rows.append(
            [
                f"{first['budget']:,.0f}",
                f"{first['heuristic_params']:,}",
                _fmt([x["heuristic_acc"] for x in per_seed], True),
                f"{first['searched_params']:,}",
                _fmt([x["searched_acc"] for x in per_seed], True),
            ]
        )
    _table(
        "Heuristic vs best searched (validation accuracy %, inherited weights)",
        ["budget", "heuristic params", "heuristic acc", "searched params", "searched acc"],
        rows,
    )

    rows = [
        [
            h["iteration"],
            f"{h['hv']:.4f}",
            h["surrogate"],
            f"{h['surrogate_cv_tau']:.2f}",
            f"{h.get('new_kendall_tau', float('nan')):.2f}",
        ]
        + [f"{h[k]:.1f}" for k in ("adapt_s", "surrogate_s", "nsga2_s", "evaluate_s", "seconds")]
        for h in results[0]["nat"]["history"][1:]
    ]
    _table(
        f"NAT iterations (seed {args.seeds[0]})",
        [
            "iteration",
            "HV",
            "surrogate",
            "CV tau",
            "tau on new",
            "adapt s",
            "surrogate s",
            "NSGA-II s",
            "evaluate s",
            "total s",
        ],
        rows,
    )
    print(f"\npre-training: {results[0]['pretrain_s']:.0f} s; written {args.out}")


def _table(title: str, headers: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
