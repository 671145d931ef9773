"""``nat prune``: an exported subnet, trained on one task, moved to another and pruned to a
parameter budget while it is fine-tuned (Cortesi's transfer), beside the same fine-tuning
without pruning when asked."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..fields import OptionError
from .compare import parse_names
from .options import parse_size


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="prune an exported subnet to a budget while fine-tuning it on new data",
        description="Loads an exported subnet (a front folder, `nat sample`'s output or a "
        "pruned one), replaces its classifier when the new data has another number of "
        "classes, and fine-tunes it on the data while torch-pruning removes its least "
        "important channels, a step before each epoch, until it fits --max-params. Writes "
        "config.json, weights.pt (load it with nat.io.checkpoint.load_subnet), model.onnx "
        "and prune.md into --out.",
    )
    p.add_argument(
        "--model", required=True, metavar="DIR", help="an exported subnet's folder or config.json"
    )
    p.add_argument("--data", required=True, help="'digits', an ImageFolder or a .tar.gz")
    p.add_argument("--subset", type=int, default=None, help="a stratified subset of N images")
    p.add_argument(
        "--classes",
        type=parse_names,
        default=(),
        metavar="NAME,NAME,...",
        help="keep only these classes of --data (names or numbers)",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the splits (default 0)")
    p.add_argument(
        "--max-params",
        required=True,
        type=parse_size,
        metavar="SIZE",
        help="parameter budget, e.g. 200k (every weight, the new classifier included)",
    )
    p.add_argument(
        "--importance",
        default="taylor",
        choices=["l1", "taylor"],
        help="which channels go: smallest |weight x gradient| (taylor, the default) or "
        "smallest L1 norm (l1)",
    )
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default 0.05 with a new classifier, for a new task; 0.01 "
        "when the model keeps its own classes)",
    )
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default 0)")
    p.add_argument(
        "--compare-unpruned",
        action="store_true",
        help="also fine-tune the unpruned model for the same epochs and report both",
    )
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip model.onnx")
    p.add_argument("--out", default=None, help="output folder (default: the model's pruned-SIZE/)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from search_spaces import Arch

    from ..data import data_settings, load_from_settings
    from ..folder import check_output_folder
    from ..io.checkpoint import export_subnet, load_subnet
    from ..io.deploy import INPUT_FORMAT, sample_images
    from ..io.files import atomic_write, markdown_table
    from ..profile import profile
    from ..pruning import params_of, transfer, transfer_lr
    from ..training.evaluate import SubnetEvaluator
    from ..training.train import evaluate

    if args.epochs < 1:
        raise ValueError(f"--epochs {args.epochs}: pruning happens while fine-tuning, give 1+")
    folder = Path(args.model)
    folder = folder.parent if folder.name == "config.json" else folder
    out = Path(args.out or folder / f"pruned-{args.max_params:.0f}")
    check_output_folder(out, "out", "prune.md")
    source, config = load_subnet(folder)
    if params_of(source) <= args.max_params:
        raise OptionError(
            "--max-params",
            f"{folder} has {params_of(source):,} params, already within {args.max_params:,.0f}: "
            "nothing to prune; give a smaller budget",
        )
    resolution = config["arch"]["resolution"]
    settings = data_settings(
        args.data, resolution, args.split_seed, args.subset, classes=args.classes
    )
    data = load_from_settings(settings)
    print(f"pruning {folder} ({params_of(source):,} params) to {args.max_params:,.0f} on "
          f"{data.num_classes} classes of {args.data}")  # fmt: skip

    def score(model) -> tuple[float, float]:
        val, test = (SubnetEvaluator.batches(split) for split in (data.val, data.test))
        return evaluate(model, val, resolution), evaluate(model, test, resolution)

    # The same classes in the same order: the same task, and the classifier is kept.
    same_task = config.get("class_names") == data.class_names
    lr = args.lr if args.lr is not None else transfer_lr(source, data, not same_task)
    common = {"epochs": args.epochs, "lr": lr, "seed": args.seed}
    common = {**common, "new_classifier": not same_task, "progress": args.progress}
    pruned = transfer(source, data, resolution, args.max_params, args.importance, **common)
    params, macs = profile(pruned, resolution)
    val, test = score(pruned)
    rows = [[f"pruned ({args.importance})", f"{params:,}", f"{macs:,}", f"{test:.1%}"]]
    info = {
        "pruned": True,
        "pruned_from": str(folder.resolve()),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "params": params,
        "macs": macs,
        "val_accuracy": val,
        "test_accuracy": test,
        "importance": args.importance,
        "max_params": args.max_params,
        **common,
        "data": settings,
        "input": INPUT_FORMAT,
    }
    info.pop("progress")
    if args.compare_unpruned:
        whole = transfer(source, data, resolution, None, **common)
        params_w, macs_w = profile(whole, resolution)
        val_w, test_w = score(whole)
        info["unpruned"] = {"params": params_w, "macs": macs_w, "val_accuracy": val_w,
                            "test_accuracy": test_w}  # fmt: skip
        rows.append(["fine-tuned, unpruned", f"{params_w:,}", f"{macs_w:,}", f"{test_w:.1%}"])
    images = sample_images(data.val) if args.onnx else None
    export_subnet(pruned, Arch.from_dict(config["arch"]), out, info, images)
    table = markdown_table(["model", "params", "MACs", "test accuracy"], rows)
    text = (
        f"# {folder} pruned to {args.max_params:,.0f} params on {args.data}\n\n"
        f"{args.epochs} epoch(s) of fine-tuning at lr {lr}, seed {args.seed}; "
        f"test split of {len(data.test)} images.\n\n{table}\n"
    )
    atomic_write(out / "prune.md", lambda f: f.write(text.encode()))
    print(table)
    print(f"wrote {out}: config.json, weights.pt, prune.md" + (", model.onnx" if args.onnx else ""))
    return 0
