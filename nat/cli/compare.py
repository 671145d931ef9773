"""``nat compare``: the Feillet heuristic and its ablations against the searched subnets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes import COMPARE
from .options import parse_ints, parse_names, parse_sizes


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="heuristic vs width-only vs depth-only vs searched vs pruned",
        description="At each budget, compare the Feillet heuristic, its width-only and "
        "depth-only ablations and the searched subnet of a `nat search` run: test accuracy "
        "with inherited weights (BatchNorm recalibrated) and after the same short fine-tuning, "
        "mean ± std over seeds. Writes compare.md, compare.json, compare.png into the run.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="a `nat search` run folder")
    p.add_argument(
        "--budgets",
        required=True,
        type=parse_sizes,
        metavar="SIZE,SIZE,...",
        help="budgets, e.g. 100k,200k,400k",
    )
    p.add_argument(
        "--metric",
        default=COMPARE.metric,
        choices=["params", "macs"],
        help=f"what the budgets bound (default {COMPARE.metric})",
    )
    p.add_argument(
        "--seeds",
        type=parse_ints,
        default=list(COMPARE.seeds),
        metavar="S,S,...",
        help=f"seeds to average over (default {','.join(map(str, COMPARE.seeds))})",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=COMPARE.finetune_epochs,
        metavar="N",
        help="equal fine-tuning for every method, in epochs; 0: inherited weights "
        f"(default {COMPARE.finetune_epochs})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=COMPARE.lr,
        help=f"fine-tuning learning rate (default {COMPARE.lr})",
    )
    p.add_argument(
        "--bn-batches",
        type=int,
        default=COMPARE.bn_batches,
        metavar="N",
        help=f"training batches for BatchNorm recalibration (default {COMPARE.bn_batches})",
    )
    p.add_argument(
        "--methods",
        type=parse_names,
        default=list(COMPARE.methods),
        metavar="NAME,...",
        help=f"what to compare (default {','.join(COMPARE.methods)}): heuristic "
        "(Feillet: shallowest depth, then the widest width within the budget), width-only "
        "(full depth), depth-only (full width), searched (the archive's most accurate subnet "
        "within the budget), pruned-l1 and pruned-taylor (the space's largest subnet, "
        "inherited, pruned to the params budget during the fine-tuning epochs with "
        "torch-pruning, by L1 magnitude or Taylor importance)",
    )
    p.add_argument(
        "--scratch",
        action="store_true",
        help="also train the heuristic's architecture from scratch, as many epochs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..compare import compare

    compare(
        args.run,
        args.budgets,
        tuple(args.seeds),
        args.finetune_epochs,
        args.metric,
        args.lr,
        args.bn_batches,
        progress=not args.quiet,
        scratch=args.scratch,
        methods=tuple(args.methods),
    )
    print((Path(args.run) / "compare.md").read_text())
    return 0
