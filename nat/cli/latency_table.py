"""``nat latency-table``: measure a space's units on this machine, for latency objectives."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import search_spaces

from ..fields import OptionError, check_writable_dir
from ..spec import LATENCY_RUNTIMES
from .options import parse_json_object, parse_list, parse_number


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="measure a space's latency table on this machine",
        description="Measures, at batch 1 with fixed threads, every unit (stem, block choice "
        "at every input size it meets, head) of a space, and caches the table keyed on this "
        "CPU, the threads, the runtime and the library versions. `nat search --objectives "
        "latency` or `--max-latency` builds the same table when it is missing; this command "
        "builds it ahead, or into a file for --latency-table.",
    )
    p.add_argument("--space", default="mbv2", choices=search_spaces.list_spaces())
    p.add_argument(
        "--space-options",
        type=parse_json_object,
        default={},
        metavar="JSON",
        help='options of the space, as for nat search, e.g. \'{"stem": "stride2"}\'',
    )
    p.add_argument("--resolutions", type=parse_list(parse_number(int), None), metavar="A,B,...")
    p.add_argument("--width-mults", type=parse_list(parse_number(float), None), metavar="A,B,...")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    p.add_argument("--runtime", default="onnxruntime", choices=LATENCY_RUNTIMES)
    p.add_argument("--threads", type=int, default=1, help="threads to measure with (default 1)")
    p.add_argument(
        "--calibration",
        type=int,
        default=10,
        help="random whole subnets the units' sum is calibrated on (default 10; 0: none)",
    )
    p.add_argument("--out", metavar="FILE", help="write the table here (default: the cache)")
    p.add_argument("--rebuild", action="store_true", help="measure again even if cached")


def run(args: argparse.Namespace) -> int:
    from .. import latency

    options = dict(args.space_options)
    for key in ("resolutions", "width_mults"):
        if getattr(args, key):
            options[key] = getattr(args, key)
    space = search_spaces.get(args.space, **options)
    if args.calibration < 0:
        raise ValueError(f"--calibration must be 0 or more, got {args.calibration}")
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    if args.threads < 1:
        raise OptionError("--threads", f"must be at least 1, got {args.threads}")
    cached = latency.default_path(space, args.num_classes, args.runtime, args.threads)
    # Where the table goes is checked before it is measured (minutes), not after.
    target = Path(args.out) if args.out else cached
    if target.is_dir():
        raise OptionError("--out", f"{target} is a folder: give a file name")
    check_writable_dir(target.parent, "--out" if args.out else "NAT_CACHE_DIR")
    if args.rebuild or args.out:
        table = latency.build_table(
            space,
            args.num_classes,
            args.runtime,
            args.threads,
            calibration=args.calibration,
            log=print,
        )
        path = table.save(Path(args.out) if args.out else cached)
    else:
        table = latency.load_or_build(
            space, args.num_classes, args.runtime, args.threads, log=print
        )
        path = cached
    ends = table.predict(np.stack([space.encode(space.smallest()), space.encode(space.largest())]))
    print(
        f"{path}: {len(table.rows)} units measured in {table.build_seconds:.0f} s with "
        f"{table.machine['runtime']}, {table.machine['threads']} thread(s) on "
        f"{table.machine['cpu']}; predicted latency at batch 1: smallest subnet "
        f"{ends[0]:.3f} ms, largest {ends[1]:.3f} ms"
    )
    return 0
