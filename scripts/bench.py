"""Benchmark suite: search quality, heuristic vs searched, ranking fidelity, surrogate quality,
speed, cost growth, quality of the handed-back models, class-incremental learning and
deployment. Each benchmark prints a summary table and writes ``<name>.json`` and ``<name>.md``
(plus plots) under ``--out``.

    python scripts/bench.py                          # all of them on a CIFAR-10 subset
    python scripts/bench.py search fidelity          # some of them
    python scripts/bench.py --quick --data digits    # every code path in about two minutes
    python scripts/bench.py quality --set quality_space='"resnet"' quality_seeds='[0]'

The data defaults to ``cifar10-train-jpeg.tar.gz`` in the ``shared/data`` folder beside the
repository; ``--data`` takes any path that ``nat`` loads, or ``digits``. Every benchmark of a
run shares one pre-trained supernet (cached in ``--out`` and reused while the settings are
unchanged), so that methods differ only in how they search. Figures that compare two things
(supernet vs static, 2 vs 1 workers) are measured side by side, interleaved, in one run.
The benchmarks themselves live in ``scripts/benchmarks/``, one module each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import BENCHES, parse_overrides, run_suite
from benchmarks.common import DEFAULT_DATA


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
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=JSON",
        help="override settings of scripts/benchmarks/settings.py, each value as JSON",
    )
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
    try:
        overrides = parse_overrides(args.set)
    except ValueError as err:
        parser.error(str(err))
    if args.seeds:  # a short form of --set seeds=[...]
        overrides["seeds"] = tuple(args.seeds)
    run_suite(names, args.data, args.out, args.quick, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
