"""The ``nat`` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

import search_spaces
from search_spaces import Arch

__all__ = ["main"]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(not v.is_integer() for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_size(text: str) -> float:
    """'500k' -> 500000, '2.5M' -> 2500000, '60M', '1G', '12000'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a number with optional k/M/G suffix, got {text!r}"
        )
    return float(match.group(1)) * _SUFFIXES[match.group(2).lower()]


def _add_space_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space",
        default="mbv2",
        choices=search_spaces.list_spaces(),
        help="search space / network family (default mbv2)",
    )
    p.add_argument(
        "--resolutions",
        type=_ints,
        default=None,
        metavar="PX,PX,...",
        help="input resolutions to search, in px (default 24,28,32,36,40)",
    )
    p.add_argument(
        "--width-mults",
        type=_floats,
        default=None,
        metavar="W,W,...",
        help="width multiplier choices (default: the space's)",
    )
    p.add_argument(
        "--space-options",
        type=_json_object,
        default={},
        metavar="JSON",
        help='other space options as JSON, e.g. \'{"kernel_sizes": [3, 5], "stem": "imagenet"}\'',
    )


def _space_options(args: argparse.Namespace) -> dict:
    options = dict(args.space_options)
    if args.resolutions:
        options["resolutions"] = args.resolutions
    if args.width_mults:
        options["width_mults"] = args.width_mults
    return options


def _add_data_options(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default,
        metavar="SOURCE",
        help="'digits' (scikit-learn's bundled 8x8 digits, the default), an "
        "ImageFolder directory, or a .tar.gz of one"
        + ("" if default else " (default: the checkpoint's training data)"),
    )
    g.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="use a stratified subset of N images in total (default: all)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="side of the stored images in px (default: the space's largest "
        "resolution); each subnet resizes them to its own resolution",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of each class held out for validation (default 0.1)",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="fraction of each class held out for testing (default 0.1)",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where archives are unpacked and decoded (default $NAT_CACHE_DIR or ~/.cache/nat)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of splits, sampling and training")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to compute (default: CUDA when present, else CPU)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nat",
        description="Evolutionary multi-objective neural architecture search with "
        "weight-sharing supernets. MACs are multiply-accumulates per image; "
        "parameters count every weight, classifier included.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train-supernet",
        help="train a supernet on a dataset",
        description="Train a weight-sharing supernet with the sandwich rule "
        "and in-place distillation, then report the validation "
        "accuracy of its largest and smallest subnets.",
    )
    _add_space_options(p)
    p.add_argument(
        "--init",
        default=None,
        metavar="CHECKPOINT",
        help="start from this supernet (e.g. trained on another dataset); its "
        "classifier is rebuilt when the class count differs",
    )
    _add_data_options(p)
    _add_run_options(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    g.add_argument("--weight-decay", type=float, default=4e-5, help="(default 4e-5)")
    g.add_argument(
        "--random-subnets",
        type=int,
        default=2,
        help="random subnets per step besides largest and smallest (default 2)",
    )
    g.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="weight of distillation from the largest subnet in the other subnets' loss, "
        "the rest on the labels; 1 is OFA's pure distillation (default 0.5)",
    )
    g.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="checkpoint to write, rewritten after every epoch (default runs/supernet-SPACE.pt)",
    )

    p = sub.add_parser(
        "sample",
        help="take a subnet out of a trained supernet",
        description="Pick a subnet, recalibrate its BatchNorm on training "
        "images, evaluate it, and export its config JSON, "
        "state_dict and TorchScript model. No retraining.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="supernet checkpoint")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", metavar="FILE", help="architecture JSON (as exported)")
    which.add_argument("--random", action="store_true", help="a random subnet (from --seed)")
    which.add_argument("--smallest", action="store_true", help="the smallest subnet")
    which.add_argument("--largest", action="store_true", help="the largest subnet")
    p.add_argument("--export", required=True, metavar="DIR", help="folder to write into")
    p.add_argument(
        "--bn-batches",
        type=int,
        default=20,
        help="training batches for BatchNorm recalibration (default 20)",
    )
    _add_data_options(p, default=None)
    _add_run_options(p)

    p = sub.add_parser(
        "search",
        help="search the accuracy / complexity Pareto front",
        description="NAT: surrogate-guided NSGA-II over the space, with online "
        "adaptation of the supernet to the task. Writes the run "
        "folder: archive.json, pareto.csv, pareto.png, history.csv, "
        "front/ subnets, report.md, supernet.pt.",
    )
    _add_space_options(p)
    g = p.add_argument_group("budgets and objectives")
    g.add_argument(
        "--max-params",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="parameter budget, e.g. 500k or 2.5M (default: none)",
    )
    g.add_argument(
        "--max-macs",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="budget of multiply-accumulates per image, e.g. 60M (default: none)",
    )
    g.add_argument(
        "--objectives",
        default="params",
        choices=["params", "macs", "params,macs"],
        help="complexity objectives besides the error (default params)",
    )
    g = p.add_argument_group("search")
    g.add_argument("--iterations", type=int, default=5, help="NAT iterations (default 5)")
    g.add_argument(
        "--doe-size",
        type=int,
        default=16,
        help="random subnets in the initial archive (default 16)",
    )
    g.add_argument(
        "--candidates",
        type=int,
        default=8,
        help="subnets evaluated for real per iteration (default 8)",
    )
    g.add_argument("--population", type=int, default=40, help="NSGA-II population (default 40)")
    g.add_argument(
        "--generations", type=int, default=20, help="NSGA-II generations per iteration (default 20)"
    )
    g.add_argument(
        "--surrogate",
        default="adaptive",
        choices=["adaptive", "rbf", "gp", "mlp", "trees"],
        help="accuracy predictor (default adaptive: best cross-validated tau)",
    )
    g.add_argument(
        "--adapt-epochs",
        type=int,
        default=1,
        help="supernet adaptation epochs per iteration; 0 turns it off (default 1)",
    )
    g.add_argument(
        "--bn-batches",
        type=int,
        default=20,
        help="training batches for BatchNorm recalibration (default 20)",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="start from this trained supernet (default: train one first)",
    )
    g.add_argument(
        "--pretrain-epochs",
        type=int,
        default=5,
        help="epochs to train a new supernet, or a transferred one whose classes "
        "differ (default 5)",
    )
    g.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default runs/search-SPACE)"
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue the interrupted run in DIR from its last completed iteration (its "
        "saved settings are used; other search options are ignored)",
    )
    g = p.add_argument_group("parallel evaluation (Ray)")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="evaluate subnets on N local Ray workers, one CPU each (default: in this process)",
    )
    g.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="evaluate on the Ray cluster at ADDR: auto, host:port or ray://host:port "
        "(clusters started by `ray start` need RAY_AUTH_MODE=token, set for you); the data "
        "path must exist on every node",
    )
    g.add_argument(
        "--adapt-workers",
        type=int,
        default=0,
        help="adapt the supernet data-parallel on N >= 2 Ray Train workers (gloo, CPU; with "
        "--workers or --address). Default 0: in this process",
    )
    _add_data_options(p)
    _add_run_options(p)

    p = sub.add_parser(
        "compare",
        help="heuristic vs width-only vs depth-only vs searched",
        description="At each budget, compare the Feillet heuristic, its "
        "width-only and depth-only ablations and the searched "
        "subnet of a `nat search` run: test accuracy with inherited "
        "weights and after the same short fine-tuning, mean ± std "
        "over seeds. Writes compare.md, compare.json, compare.png "
        "into the run folder.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="a `nat search` run folder")
    p.add_argument(
        "--budgets",
        required=True,
        type=lambda t: [parse_size(v) for v in t.split(",")],
        metavar="SIZE,SIZE,...",
        help="budgets, e.g. 100k,200k,400k",
    )
    p.add_argument(
        "--metric",
        default="params",
        choices=["params", "macs"],
        help="what the budgets bound (default params)",
    )
    p.add_argument(
        "--seeds",
        type=_ints,
        default=[0, 1, 2],
        metavar="S,S,...",
        help="seeds to average over (default 0,1,2)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=1,
        help="equal fine-tuning for every method, in epochs (default 1)",
    )
    p.add_argument(
        "--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)"
    )
    p.add_argument(
        "--bn-batches",
        type=int,
        default=20,
        help="training batches for BatchNorm recalibration (default 20)",
    )
    p.add_argument(
        "--scratch",
        action="store_true",
        help="also train the heuristic's architecture from scratch, as many epochs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _device(name: str):
    import torch

    from .train import default_device

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return default_device() if name == "auto" else torch.device(name)


def _data_settings(args: argparse.Namespace, image_size: int) -> dict:
    from .data import data_settings

    return data_settings(
        args.data,
        args.image_size or image_size,
        args.seed,
        args.subset,
        args.val_fraction,
        args.test_fraction,
    )


def _train_supernet(args: argparse.Namespace) -> int:
    from supernets import build_supernet

    from .checkpoint import load_supernet
    from .data import load_from_settings, make_loader
    from .train import TrainConfig, evaluate_subnet, train_supernet

    device = _device(args.device)
    if args.init:
        supernet, _ = load_supernet(args.init, space=args.space)
        space = supernet.space
    else:
        space = search_spaces.get(args.space, **_space_options(args))
    settings = _data_settings(args, max(space.resolutions))
    data = load_from_settings(settings, args.cache_dir)
    if args.init:
        supernet.reset_classifier(data.num_classes)  # transfer: keep all but the head
    else:
        supernet = build_supernet(space, data.num_classes)
    out = Path(args.out or f"runs/supernet-{space.name}.pt")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        random_subnets=args.random_subnets,
        distill_weight=args.distill_weight,
        seed=args.seed,
    )
    print(
        f"training {space!r} on {settings['source']} ({len(data.train)} train / "
        f"{len(data.val)} val images, {data.num_classes} classes) on {device}"
    )
    start = time.perf_counter()
    metadata = {"data": settings, "class_names": data.class_names}
    history = train_supernet(
        supernet,
        data,
        config,
        checkpoint=out,
        device=device,
        checkpoint_metadata=metadata,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    bn_loader = make_loader(data.train_eval, args.batch_size, shuffle=True, seed=args.seed)
    val_loader = make_loader(data.val, 256, shuffle=False)
    results = {}
    for label, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        acc, _ = evaluate_subnet(supernet, arch, bn_loader, val_loader)
        params, macs = space.complexity(arch, data.num_classes)
        results[label] = {"val_accuracy": acc, "params": params, "macs": macs}
        print(f"{label:>8} subnet: val accuracy {acc:.2%}, {params:,} params, {macs:,} MACs")
    from .checkpoint import save_supernet

    save_supernet(
        out, supernet.cpu(), **metadata, history=history, results=results, train_seconds=seconds
    )
    print(f"trained {config.epochs} epochs in {seconds:.1f} s; checkpoint: {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import export_subnet, load_supernet
    from .data import load_from_settings, make_loader
    from .train import evaluate, evaluate_subnet

    supernet, metadata = load_supernet(args.checkpoint)
    space = supernet.space
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"architecture file {path} not found")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"architecture file {path} is not valid JSON: {err}") from err
        arch = Arch.from_dict(doc.get("arch", doc))
        space.encode(arch)  # clear error when it is not in the supernet's space
    elif args.random:
        arch = space.decode(space.sample(1, np.random.default_rng(args.seed))[0])
    else:
        arch = space.smallest() if args.smallest else space.largest()
    settings = dict(metadata.get("data") or {})
    if args.data:
        settings.update(_data_settings(args, max(space.resolutions)))
    if not settings:
        raise ValueError("the checkpoint does not name its data: pass --data")
    data = load_from_settings(settings, args.cache_dir)
    if data.num_classes != supernet.num_classes:
        raise ValueError(
            f"--data has {data.num_classes} classes, the checkpoint "
            f"{supernet.num_classes}: retrain with --init for another task"
        )
    device = _device(args.device)
    supernet.to(device).eval()
    bn_loader = make_loader(data.train_eval, args.batch_size, shuffle=True, seed=args.seed)
    val_acc, model = evaluate_subnet(
        supernet, arch, bn_loader, make_loader(data.val, 256, shuffle=False), args.bn_batches
    )
    test_acc = evaluate(model, make_loader(data.test, 256, shuffle=False), arch.resolution)
    params, macs = space.complexity(arch, data.num_classes)
    info = {
        "space": space.name,
        "space_options": space.options,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "params": params,
        "macs": macs,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "input": "RGB, resolution x resolution px, pixels scaled to -1..1",
    }
    export_subnet(model.cpu(), arch, args.export, info)
    print(
        f"subnet: {params:,} params, {macs:,} MACs at {arch.resolution} px; "
        f"val accuracy {val_acc:.2%}, test accuracy {test_acc:.2%}; exported to {args.export}"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from .api import resume, search

    if args.resume:
        result = resume(args.resume, args.workers, args.address, not args.quiet, args.adapt_workers)
        _print_front(result, Path(args.resume))
        return 0
    if args.data != "digits" and not Path(args.data).exists():
        raise FileNotFoundError(
            f"data {args.data} not found: give 'digits', an ImageFolder "
            "directory or a .tar.gz of one"
        )
    out = Path(args.out or f"runs/search-{args.space}")
    result = search(
        space=args.space,
        data=args.data,
        max_params=args.max_params,
        max_macs=args.max_macs,
        iterations=args.iterations,
        seed=args.seed,
        out=out,
        checkpoint=args.checkpoint,
        pretrain_epochs=args.pretrain_epochs,
        space_options=_space_options(args),
        image_size=args.image_size,
        subset=args.subset,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        metrics=tuple(args.objectives.split(",")),
        doe_size=args.doe_size,
        candidates=args.candidates,
        population=args.population,
        generations=args.generations,
        surrogate=args.surrogate,
        adapt_epochs=args.adapt_epochs,
        bn_batches=args.bn_batches,
        batch_size=args.batch_size,
        workers=args.workers,
        address=args.address,
        adapt_workers=args.adapt_workers,
    )
    _print_front(result, out)
    return 0


def _print_front(result, out: Path) -> None:
    archive = result.archive
    print(
        f"search done in {result.seconds:.0f} s: {len(archive)} subnets evaluated, "
        f"hypervolume {result.hypervolume:.4f}; front:"
    )
    for i in result.front:
        e = archive.entries[i]
        print(f"  {e.accuracy:7.2%}  {e.params:>11,} params  {e.macs:>13,} MACs  ({e.source})")
    print(f"run folder: {out} (report.md, pareto.png, front/)")


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    rows = compare(
        args.run,
        args.budgets,
        tuple(args.seeds),
        args.finetune_epochs,
        args.metric,
        args.lr,
        args.bn_batches,
        progress=not args.quiet,
        scratch=args.scratch,
    )
    print((Path(args.run) / "compare.md").read_text())
    return 0 if rows else 2


COMMANDS = {
    "train-supernet": _train_supernet,
    "sample": _sample,
    "search": _search,
    "compare": _compare,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"nat {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
