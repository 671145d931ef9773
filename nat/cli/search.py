"""``nat search``: the flags are the RunSpec's settings, plus how to treat the run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..spec import OptionError, RunSpec
from ..transfer import spec_for_checkpoint
from .options import add_spec_options, given_options, spec_from_args

# What may change when a run is resumed: where it is evaluated.
RESUMABLE = ("workers", "address", "adapt_workers")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="search the accuracy / complexity Pareto front",
        description="NAT: surrogate-guided NSGA-II over the space, with online adaptation of "
        "the supernet to the task. Writes the run folder: run.json, archive.json, pareto.csv, "
        "pareto.png, history.csv, front/ subnets, report.md, supernet.pt.",
    )
    add_spec_options(p)
    g = p.add_argument_group("the run folder")
    g.add_argument(
        "--spec",
        metavar="FILE",
        help="start from the settings in this run.json; flags given too override them",
    )
    g.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the stopped run in DIR (pre-training or search) with its saved "
        f"settings; only {', '.join('--' + o.replace('_', '-') for o in RESUMABLE)} may change",
    )
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .. import resume, run_spec

    progress = not args.quiet
    if args.resume:
        fixed = sorted(set(given_options(args)) - set(RESUMABLE))
        if fixed or args.spec or args.overwrite:
            flags = [f"--{f.replace('_', '-')}" for f in fixed]
            flags += [f for f, v in (("--spec", args.spec), ("--overwrite", args.overwrite)) if v]
            raise OptionError(
                "resume", f"--resume uses the run's saved settings; drop {', '.join(flags)}"
            )
        backend = {k: v for k, v in given_options(args).items() if k in RESUMABLE}
        result = resume(args.resume, progress=progress, **backend)
        print_front(result, Path(args.resume))
        return 0
    base = None
    if args.spec:
        try:
            doc = json.loads(Path(args.spec).read_text())
        except json.JSONDecodeError as err:
            raise OptionError("spec", f"--spec {args.spec} is not valid JSON: {err}") from None
        base = RunSpec.from_dict(doc, args.spec)
        if not hasattr(args, "out") and Path(args.spec).name == "run.json":
            base = RunSpec.from_options(base, out=str(Path(args.spec).parent))
    spec = spec_from_args(args, base)
    # With a checkpoint, the space the source supernet was trained for.
    given = set(given_options(args)) | ({"space"} if base is not None else set())
    spec = spec_for_checkpoint(spec, given)
    if spec.out is None:
        spec = RunSpec.from_options(spec, out=f"runs/search-{spec.space}")
    result = run_spec(spec, overwrite=args.overwrite, progress=progress)
    print_front(result, Path(spec.out))
    return 0


def print_front(result, out: Path) -> None:
    from ..report import handed_back

    archive = result.archive
    timing = result.timing or {}
    limit = f" (limit {timing['limit']:.0f} s)" if timing.get("limit") else ""
    print(
        f"search done in {result.seconds:.0f} s{limit}: {len(archive)} subnets evaluated, "
        f"hypervolume {result.hypervolume:.4f}; handed back:"
    )
    print("  folder     inherited  trained    test   epochs      params          MACs  source")
    handed = handed_back(result)
    for folder, m in handed:
        e = archive.entries[m.index]
        tuned = "-" if m.trained_val_accuracy is None else f"{m.trained_val_accuracy:7.2%}"
        tuned += "" if m.trained or m.trained_val_accuracy is None else "*"
        print(
            f"  {folder:9}  {e.accuracy:9.2%}  {tuned:>7}  {m.test_accuracy:6.2%}  "
            f"{m.epochs:6.1f}  {e.params:>10,}  {e.macs:>12,}  {e.source}"
        )
    if any(m.trained_val_accuracy is not None and not m.trained for _, m in handed):
        print("  * training did not beat the inherited weights on validation; not kept")
    folder, best = max(handed, key=lambda fm: fm[1].val_accuracy)
    print(f"best on validation: {folder} ({best.val_accuracy:.2%}, test {best.test_accuracy:.2%})")
    print(f"run folder: {out} (report.md, pareto.png, front/)")
