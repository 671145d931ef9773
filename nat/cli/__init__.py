"""The ``nat`` command line: one module per command, each with its parser beside its handler;
the search settings' flags are generated from :mod:`nat.spec`."""

from __future__ import annotations

import argparse
import json
import sys

from . import (
    cil,
    compare,
    latency_table,
    multi_exit,
    options,
    prune,
    sample,
    search,
    train_supernet,
)

__all__ = ["build_parser", "main"]

COMMANDS = {
    "train-supernet": train_supernet,
    "sample": sample,
    "search": search,
    "compare": compare,
    "cil": cil,
    "latency-table": latency_table,
    "multi-exit": multi_exit,
    "prune": prune,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nat",
        description="Evolutionary multi-objective neural architecture search with "
        "weight-sharing supernets. MACs are multiply-accumulates per image; "
        "parameters count every weight, classifier included.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors are one line on stderr with exit code 2 (130 when interrupted),
    never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options.SHOW_ALL = "--help-all" in argv  # --help with the expert flags listed too
    argv = [("--help" if a == "--help-all" else a) for a in argv]
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print(f"nat {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ConnectionError, json.JSONDecodeError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message += f": {err.filename}"
        print(f"nat {args.command}: error: {message}", file=sys.stderr)
        return 2
