"""``nat multi-exit``: exits on a front subnet, thresholds for a compute budget, and the
accuracy vs expected-MACs curve over the run's single-exit front."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes import MULTI_EXIT
from .options import parse_ints


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="multi-exit subnet with early exit, against the single-exit front",
        description="Adds exits (a 1x1 ConvBN, pooling and a linear classifier) after chosen "
        "stages of a trained subnet, trains it whole (the exits' cross-entropies plus "
        "distillation from the last exit), then fits the exits' confidence thresholds on the "
        "validation split for targets of expected MACs per image and scores each on the test "
        "split. Writes multiexit.json, multiexit.md, multiexit.png (the curve over the run's "
        "front), weights.pt and model.onnx (one output per exit).",
    )
    src = p.add_argument_group("which subnet (one of)")
    src.add_argument(
        "--run",
        metavar="DIR",
        help="a `nat search` run: its front's most accurate subnet (or --subnet), on its data",
    )
    src.add_argument("--subnet", metavar="NN", help="with --run: the front folder, e.g. 02")
    src.add_argument(
        "--config", metavar="PATH", help="an exported subnet's config.json or its folder"
    )
    data = p.add_argument_group("data of --config (--run uses the run's own split)")
    data.add_argument("--data", default="digits", help="'digits', an ImageFolder or a .tar.gz")
    data.add_argument("--subset", type=int, default=None, help="a stratified subset of N images")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the splits (default 0)")
    p.add_argument(
        "--exits",
        type=parse_ints,
        default=None,
        metavar="K,K,...",
        help="stages (0-based) to put an exit after (default: the last stage of each spatial "
        "scale but the last)",
    )
    d = MULTI_EXIT
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument(
        "--points",
        type=int,
        default=d.points,
        help=f"expected-MACs targets on the curve (default {d.points})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"training seed (default {d.seed})")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip model.onnx")
    p.add_argument(
        "--out", default=None, help="output folder (default: the run's or the subnet's multi-exit/)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.config):
        raise ValueError("give either --run DIR (its front) or --config PATH (one subnet)")
    if args.subnet and not args.run:
        raise ValueError("--subnet picks a front folder of --run: give --run DIR")
    from ..data import load_dataset
    from ..folder import check_output_folder
    from ..io.checkpoint import load_subnet
    from ..multiexit import judge_multi_exit, most_accurate, run_front

    front: list[dict] = []
    if args.run:
        from ..folder import open_run
        from ..prepare import load_data

        run_dir = Path(args.run)
        spec = open_run(run_dir)
        pairs = run_front(run_dir)
        front = [config for _, config in pairs]
        if args.subnet:
            chosen = [f for f, _ in pairs if f.name == args.subnet]
            if not chosen:
                names = ", ".join(f.name for f, _ in pairs)
                raise ValueError(f"--subnet {args.subnet}: the front holds {names}")
            folder = chosen[0]
        else:
            folder = most_accurate(pairs)
        data = load_data(spec)
        out = Path(args.out or run_dir / "multi-exit")
    else:
        folder = Path(args.config)
        folder = folder.parent if folder.name == "config.json" else folder
        out = Path(args.out or folder / "multi-exit")
    check_output_folder(out, "out", "multiexit.json")
    net, config = load_subnet(folder)
    if config.get("pruned"):
        raise ValueError(
            f"{folder} is a pruned model: its layers no longer have its architecture's "
            "channels, which the exits are sized by; give an unpruned subnet"
        )
    if not args.run:
        size = config["arch"]["resolution"]
        data = load_dataset(args.data, size, seed=args.split_seed, subset=args.subset)
    if net.classifier.out_features != data.num_classes:
        raise ValueError(
            f"{folder} classifies {net.classifier.out_features} classes, the data has "
            f"{data.num_classes}: give the data it was trained on"
        )
    print(f"multi-exit on {folder}")
    doc = judge_multi_exit(
        net,
        data,
        out,
        exits=args.exits,
        epochs=args.epochs,
        lr=args.lr,
        points=args.points,
        front=front,
        onnx=args.onnx,
        seed=args.seed,
        progress=args.progress,
    )
    print((out / "multiexit.md").read_text())
    print(f"wrote {out}: multiexit.json, multiexit.md, multiexit.png, weights.pt", end="")
    print(", model.onnx" if "onnx_max_abs_diff" in doc else "")
    return 0
