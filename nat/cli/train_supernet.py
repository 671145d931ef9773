"""``nat train-supernet``: train a supernet on a dataset and report its extreme subnets."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..fields import check_writable_dir
from ..io.files import jsonable
from ..spec import OptionError, spec_error_names
from .options import add_spec_options, parse_sizes, spec_from_args

# Fewer images than this per worker make BatchNorm statistics of its own noisy.
_MIN_SHARE = 16
_FLAGS = {"pretrain_epochs": "--epochs", "pretrain_lr": "--lr", "checkpoint": "--init"}


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="train a supernet on a dataset",
        description="Train a weight-sharing supernet with the sandwich rule and in-place "
        "distillation, then report the validation accuracy of its largest and smallest "
        "subnets. The checkpoint is rewritten after every epoch; --resume continues it.",
    )
    add_spec_options(
        p,
        lambda o: (
            o.path[0] in ("space", "space_options", "data", "pretrain")
            or o.name in ("checkpoint", "device", "seed", "batch_size")
        ),
        rename=_FLAGS,
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="checkpoint to write, rewritten after every epoch (default runs/supernet-SPACE.pt)",
    )
    p.add_argument(
        "--budgets",
        type=parse_sizes,
        default=None,
        metavar="SIZE,...",
        help="parameter budgets the supernet is to serve, e.g. 300k,1M: its widths are fitted "
        "to each (unless --width-mults is given), its sampling and teacher to the largest, and "
        "the checkpoint records them so that a search at another budget is warned",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="train data-parallel on N >= 2 Ray Train workers (a local Ray, or the cluster "
        "at --address), with the same result as one process; checkpoints go to OUT.ray-train "
        "beside --out, which every node must reach",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="train on the Ray cluster at ADDR (auto, host:port or ray://host:port), on "
        "--workers workers (default: one per CPU of the cluster)",
    )
    p.add_argument(
        "--sync-batch-norm",
        action="store_true",
        help="with --workers: pool BatchNorm statistics over the workers, so that training is "
        "one process's up to float rounding; costs two round trips per BatchNorm layer and "
        "subnet each step (2.5x slower a step on 2 CPUs); default: each worker's own",
    )
    p.add_argument("--resume", action="store_true", help="continue training saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..folder import RUN_FILE, device_of
    from ..io.checkpoint import load_training_state, save_supernet
    from ..prepare import load_data, prepare_supernet
    from ..training.evaluate import SubnetEvaluator
    from ..transfer import spec_for_budgets

    spec = spec_from_args(args).validate()
    device = device_of(spec)
    out = Path(args.out or f"runs/supernet-{spec.space}.pt")
    if out.is_dir():
        raise OptionError("--out", f"{out} is a folder: give a checkpoint file name")
    check_writable_dir(out.parent, "--out")
    if out.exists() and not args.resume:
        raise OptionError(
            "--out", f"{out} exists: pass --resume to continue it, or choose another file"
        )
    run_folder = next((p for p in out.resolve().parents if (p / RUN_FILE).is_file()), None)
    if run_folder is not None:
        raise OptionError(
            "--out",
            f"{out} is inside the run folder {run_folder}, whose files belong to that "
            "run (nat search --resume continues its training): choose a file elsewhere",
        )
    if args.workers is not None and args.workers < 1:
        raise OptionError("workers", f"must be at least 1, got {args.workers}")
    parallel = (args.workers or 0) >= 2 or args.address is not None
    storage = out.with_name(out.name + ".ray-train")
    if parallel and storage.exists() and not args.resume:
        raise OptionError(
            "--out",
            f"{storage} holds an unfinished data-parallel training of {out}: pass --resume "
            "to continue it, or remove it",
        )
    if args.resume:
        load_training_state(out, None)  # a file that cannot be continued is refused now
    data = load_data(spec)
    if args.budgets:
        spec = spec_error_names(lambda: spec_for_budgets(spec, args.budgets, data.num_classes))
    print(
        f"training {spec.build_space()!r} on {spec.data.source} ({len(data.train)} train / "
        f"{len(data.val)} val images, {data.num_classes} classes) on {device}"
    )
    start = time.perf_counter()
    if parallel:
        supernet = _data_parallel(spec, data, out, storage, args)
    else:
        supernet = prepare_supernet(
            spec, data, out, args.resume, progress=not args.quiet, always_train=True
        )
    seconds = time.perf_counter() - start
    evaluator = SubnetEvaluator(data, spec.search.bn_batches, spec.batch_size, spec.seed)
    space, results = supernet.space, {}
    for label, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        acc = float(evaluator(supernet, [arch])[0])
        params, macs = space.complexity(arch, data.num_classes)
        results[label] = {"val_accuracy": acc, "params": params, "macs": macs}
        print(f"{label:>8} subnet: val accuracy {acc:.2%}, {params:,} params, {macs:,} MACs")
    from ..prepare import data_settings_of

    save_supernet(
        out,
        supernet,
        data=data_settings_of(spec),
        class_names=data.class_names,
        results=results,
        train_seconds=seconds,
        epochs=spec.pretrain.epochs,
        recipe=jsonable(asdict(spec.pretrain)),
        budgets=args.budgets,
    )
    if parallel:
        shutil.rmtree(storage, ignore_errors=True)  # its last epoch is now --out
    print(f"trained {spec.pretrain.epochs} epochs in {seconds:.1f} s; checkpoint: {out}")
    return 0


def _data_parallel(spec, data, out: Path, storage: Path, args: argparse.Namespace):
    """The supernet trained on Ray Train workers; continued, with ``--resume``, from the
    checkpoints in ``storage`` (Ray Train finds them) or else from ``out``'s training state."""
    from ..backends.ray import ray_session
    from ..backends.ray_train import checkpointed_epochs, pretrain_data_parallel
    from ..prepare import initial_supernet

    supernet, _ = initial_supernet(spec, data, always_train=True)
    resume_from = out if args.resume and not storage.exists() and out.exists() else None
    done = checkpointed_epochs(storage) if args.resume else 0
    if done:
        print(f"continuing after epoch {done}, checkpointed in {storage}")
    with ray_session(args.workers, args.address) as cpus:
        workers = args.workers or cpus
        if workers < 2:
            raise OptionError(
                "workers", f"the cluster at {args.address} has {cpus} CPU: give --workers 2 or more"
            )
        share = spec.pretrain.batch_size // workers
        if share < _MIN_SHARE and not args.sync_batch_norm:
            print(
                f"warning: each worker normalises {share} images of the batch of "
                f"{spec.pretrain.batch_size} by their own BatchNorm statistics: raise "
                f"--pretrain-batch-size to {_MIN_SHARE * workers} or more, or pass "
                "--sync-batch-norm",
                file=sys.stderr,
            )
        trained, _ = pretrain_data_parallel(
            spec,
            supernet,
            workers,
            storage,
            cpus_per_worker=min(1, cpus / workers),
            threads=max(1, cpus // workers),
            resume_from=resume_from,
            sync_batch_norm=args.sync_batch_norm,
        )
    return trained
