"""``nat cil``: judge architectures by memoryless class-incremental learning (LUCIR)."""

from __future__ import annotations

import argparse
from pathlib import Path

import search_spaces

from .compare import parse_ints, parse_names, parse_sizes
from .options import parse_json_object


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="judge architectures by memoryless class-incremental learning",
        description="Classes arrive in states and no image of a past class is kept (memoryless "
        "LUCIR: cosine classifier, imprinted new weights, frozen old ones, feature "
        "distillation from the previous state). Judges a search run's front, the Feillet rule "
        "and its width-only and depth-only ablations at --budgets, and any exported "
        "config.json, over several seeds. Writes cil.json, cil.md and cil.png.",
    )
    src = p.add_argument_group("what to judge (at least one)")
    src.add_argument("--run", metavar="DIR", help="a `nat search` run: its front, on its data")
    src.add_argument(
        "--budgets",
        type=parse_sizes,
        default=[],
        metavar="SIZE,...",
        help="params budgets for the Feillet rule, width-only and depth-only, e.g. 100k,300k",
    )
    src.add_argument(
        "--rules",
        type=parse_names,
        default=["feillet", "width-only", "depth-only"],
        metavar="RULE,...",
        help="which rules to run at --budgets: feillet, width-only, depth-only (default all)",
    )
    src.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="PATH",
        help="an exported subnet's config.json or its folder (repeatable)",
    )
    src.add_argument(
        "--inherit",
        action="store_true",
        help="start state 0 from the exported weights of --run / --config (default: scratch)",
    )
    src.add_argument(
        "--space",
        default="mbv2",
        choices=search_spaces.list_spaces(),
        help="family of the --budgets rules (default mbv2)",
    )
    src.add_argument(
        "--space-options",
        type=parse_json_object,
        default={},
        metavar="JSON",
        help='options of --space for the rules, e.g. \'{"stem": "stride2"}\' (a quarter of the '
        "small stem's MACs at 32 px)",
    )
    data = p.add_argument_group("data (with --run: the run's own split)")
    data.add_argument("--data", default="digits", help="'digits', an ImageFolder or a .tar.gz")
    data.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="px, also the --budgets rules' resolution (default: digits 8, their size; else 32)",
    )
    data.add_argument("--subset", type=int, default=None, help="a stratified subset of N images")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the splits (default 0)")
    sc = p.add_argument_group("scenario")
    sc.add_argument(
        "--initial",
        type=int,
        default=None,
        help="classes of state 0 (default 2, or the classes a --run searched on)",
    )
    sc.add_argument("--increment", type=int, default=2, help="new classes per state (default 2)")
    sc.add_argument("--states", type=int, default=5, help="states, the first included (default 5)")
    sc.add_argument("--order-seed", type=int, default=0, help="seed of the class order (default 0)")
    sc.add_argument(
        "--order",
        default=None,
        metavar="A,B,...",
        help="class order, by name or number (default: drawn with --order-seed; a run "
        "searched on some classes puts them first)",
    )
    tr = p.add_argument_group("training")
    tr.add_argument("--first-epochs", type=int, default=12, help="epochs of state 0")
    tr.add_argument("--later-epochs", type=int, default=8, help="epochs of each later state")
    tr.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    tr.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    tr.add_argument(
        "--lambda-base", type=float, default=5.0, help="λ_base of the distillation (default 5)"
    )
    tr.add_argument("--seeds", type=parse_ints, default=[0, 1, 2], metavar="S,S,...")
    p.add_argument("--out", default=None, help="output folder (default: the run, else ./cil)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from ..data import class_numbers, load_dataset
    from ..incremental.judge import from_budgets, from_configs, from_run, judge, run_data
    from ..incremental.protocol import CILConfig, Scenario

    if not (args.run or args.budgets or args.config):
        raise ValueError("nothing to judge: give --run DIR, --budgets SIZES or --config PATH")
    config = CILConfig(
        first_epochs=args.first_epochs,
        later_epochs=args.later_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        lambda_base=args.lambda_base,
    )
    searched_on: tuple[str, ...] = ()
    if args.run:
        data, searched_on = run_data(Path(args.run))
    else:
        size = args.image_size or (8 if args.data == "digits" else 32)
        data = load_dataset(args.data, size, seed=args.split_seed, subset=args.subset)
    names = data.class_names
    first = class_numbers(names, args.order.split(",") if args.order else searched_on)
    if args.initial is not None:
        initial = args.initial
    else:
        initial = len(searched_on) if searched_on and not args.order else 2
    order = _order(len(names), first, args.order_seed)
    scenario = Scenario(
        len(names), initial, args.increment, args.states, args.order_seed, tuple(order)
    )
    resolution = args.image_size or data.image_size
    candidates = from_run(Path(args.run), args.inherit) if args.run else []
    try:
        space = search_spaces.get(args.space, **args.space_options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--space-options for {args.space}: {err}") from None
    ruled, missing = from_budgets(args.budgets, space, resolution, len(names), args.rules)
    for why in missing:
        print(f"skipped {why}")
    candidates += ruled
    candidates += from_configs([Path(c) for c in args.config], args.inherit)
    out = Path(args.out or args.run or "cil")
    judge(candidates, data, scenario, config, args.seeds, out, progress=args.progress)
    print(f"wrote {out / 'cil.md'}, cil.json, cil.png")
    return 0


def _order(num_classes: int, first: list[int], seed: int) -> list[int]:
    """``first``, then the other classes in the order drawn with ``seed``."""
    import numpy as np

    drawn = [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]
    return first + [c for c in drawn if c not in first] if first else drawn
