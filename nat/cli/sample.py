"""``nat sample``: take one subnet out of a trained supernet and export it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from search_spaces import Arch

from ..fields import check_writable_dir
from ..spec import OptionError
from .options import add_spec_options, given_options


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="take a subnet out of a trained supernet",
        description="Pick a subnet, recalibrate its BatchNorm on training images, evaluate it, "
        "and export its config JSON, state_dict and ONNX model (checked against torch with "
        "onnxruntime). No retraining.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="supernet checkpoint")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", metavar="FILE", help="architecture JSON (as exported)")
    which.add_argument("--random", action="store_true", help="a random subnet (from --seed)")
    which.add_argument("--smallest", action="store_true", help="the smallest subnet")
    which.add_argument("--largest", action="store_true", help="the largest subnet")
    p.add_argument("--export", required=True, metavar="DIR", help="an empty or new folder")
    p.add_argument("--overwrite", action="store_true", help="replace what --export holds")
    add_spec_options(
        p,
        lambda o: (
            o.path[0] == "data" or o.name in ("bn_batches", "device", "seed", "batch_size", "onnx")
        ),
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _read_arch(path: Path) -> Arch:
    if not path.is_file():
        raise FileNotFoundError(f"architecture file {path} not found")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"architecture file {path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"architecture file {path} must hold a JSON object (an exported config.json or an "
            f"architecture), not {type(doc).__name__}"
        )
    try:
        return Arch.from_dict(doc.get("arch", doc))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"architecture file {path} is not an architecture: {err!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..folder import device_of
    from ..io.checkpoint import export_subnet, load_supernet
    from ..io.deploy import INPUT_FORMAT, sample_images
    from ..prepare import data_settings_of, load_data
    from ..spec import RunSpec
    from ..training.evaluate import SubnetEvaluator
    from ..training.train import evaluate

    export = Path(args.export)
    check_writable_dir(export, "--export")
    if export.exists() and any(export.iterdir()) and not args.overwrite:
        raise OptionError(
            "export", f"--export {export} is not empty: choose a new folder or pass --overwrite"
        )
    options = given_options(args)
    if args.config:  # a bad file is named before the checkpoint is loaded
        arch = _read_arch(Path(args.config))
    supernet, metadata = load_supernet(args.checkpoint)
    space = supernet.space
    if args.config:
        space.encode(arch)  # clear error when it is not in the supernet's space
    elif args.random:  # the run's seed, as the other settings the checkpoint does not fix
        seed = options.get("seed", RunSpec.seed)
        arch = space.decode(space.sample(1, np.random.default_rng(seed))[0])
    else:
        arch = space.smallest() if args.smallest else space.largest()
    saved = metadata.get("data") or {}
    if "data" not in options and not saved:
        raise OptionError("data", "the checkpoint does not name its data: pass --data")
    base = {
        "data": saved.get("source"),
        "subset": saved.get("subset"),
        "image_size": saved.get("image_size"),
        "seed": saved.get("seed", 0),
    }
    base.update({k: saved[k] for k in ("val_fraction", "test_fraction") if k in saved})
    spec = RunSpec.from_options(
        space=space.name,
        space_options=space.options,
        **{k: v for k, v in base.items() if v is not None},
        **options,
    ).validate()
    data = load_data(spec)
    if data.num_classes != supernet.num_classes:
        raise ValueError(
            f"--data has {data.num_classes} classes, the checkpoint "
            f"{supernet.num_classes}: retrain with --init for another task"
        )
    supernet.to(device_of(spec)).eval()
    evaluator = SubnetEvaluator(data, spec.search.bn_batches, spec.batch_size, spec.seed)
    val_acc, model = evaluator.evaluate_one(supernet, arch)
    test_acc = evaluate(model, evaluator.batches(data.test), arch.resolution)
    params, macs = space.complexity(arch, data.num_classes)
    info = {
        "space": space.to_dict(),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "params": params,
        "macs": macs,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "data": data_settings_of(spec),
        "input": INPUT_FORMAT,
    }
    images = sample_images(data.val) if spec.finetune.onnx else None
    export_subnet(model.cpu(), arch, export, info, images)
    print(
        f"subnet: {params:,} params, {macs:,} MACs at {arch.resolution} px; "
        f"val accuracy {val_acc:.2%}, test accuracy {test_acc:.2%}; exported to {export}"
    )
    return 0
