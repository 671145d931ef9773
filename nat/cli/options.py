"""Command-line flags generated from :data:`nat.spec.OPTIONS`: one flag per setting of a
RunSpec, with the spec's own default and help, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import json
import re
import typing
from typing import Any

from ..options import Option
from ..spec import OPTIONS, RunSpec

__all__ = [
    "GROUPS",
    "add_spec_options",
    "parse_bytes",
    "parse_duration",
    "parse_size",
    "parse_time",
    "spec_from_args",
]

_BUDGETS = (
    "max_params",
    "max_macs",
    "max_latency",
    "max_peak_memory",
    "max_model_size",
    "precision",
    "objectives",
)
# Which flags each help section shows, by the settings' paths in the spec.
GROUPS = {
    "space": lambda o: o.path[0] in ("space", "space_options"),
    "data": lambda o: o.path[0] == "data",
    "budgets and objectives": lambda o: o.name in _BUDGETS or o.name.startswith("latency_"),
    "search": lambda o: (
        o.path[0] == "search" and o.name not in _BUDGETS and not o.name.startswith("latency_")
    ),
    "supernet training": lambda o: o.path[0] == "pretrain" or o.name == "checkpoint",
    "the handed-back models (race and final training)": lambda o: o.path[0] == "finetune",
    "time budget": lambda o: o.path[0] == "plan",
    "parallel evaluation (Ray)": lambda o: o.path[0] == "backend",
    "run": lambda o: o.name in ("device", "seed", "batch_size", "out"),
}

_METAVARS = {
    "checkpoint": "FILE",
    "out": "DIR",
    "address": "ADDR",
    "data": "SOURCE",
    "cache_dir": "DIR",
    "latency_table": "FILE",
}
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_size(text: str) -> float:
    """'500k' -> 500000, '2.5M' -> 2500000, '60M', '1G', '12000'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a number with optional k/M/G suffix, got {text!r}"
        )
    return float(match.group(1)) * _SUFFIXES[match.group(2).lower()]


_TIME_UNITS = {"": 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_time(text: str) -> float:
    """A time in milliseconds: '5ms' -> 5, '800us' -> 0.8, '0.01s' -> 10, '5' -> 5."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ms|us|µs|s)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a time such as 5ms or 800us, got {text!r}")
    return float(match.group(1)) * _TIME_UNITS[match.group(2) or ""]


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """A duration in seconds: '30m' -> 1800, '2h' -> 7200, '1h30m' -> 5400, '90s' or '90'
    -> 90, '0.5h' -> 1800."""
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*(h|min|m|s)?", text.strip().lower())
    joined = "".join(f"{n}{u}" for n, u in parts)
    if not parts or joined != re.sub(r"\s+", "", text.strip().lower()):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30m, 2h, 1h30m or 900s, got {text!r}"
        )
    if len(parts) > 1 and any(not u for _, u in parts):
        raise argparse.ArgumentTypeError(f"give every part of {text!r} a unit (h, m or s)")
    return sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)


_BYTE_UNITS = {"": 1, "b": 1}
_BYTE_UNITS.update({p + s: 1024**i for i, p in enumerate("kmg", 1) for s in ("", "b", "ib")})


def parse_bytes(text: str) -> float:
    """Bytes: '256KB' -> 262144, '1.5MB', '300KiB', '4096'. K, M and G are powers of 1,024,
    as microcontroller datasheets count SRAM and flash."""
    number = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
    match = re.fullmatch(rf"\s*{number}\s*([kKmMgG]?[iI]?[bB]?)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes such as 256KB, 1.5MB or 4096, got {text!r}"
        )
    return float(match.group(1)) * _BYTE_UNITS[unit]


def parse_sizes(text: str) -> list[float]:
    """Comma-separated sizes (``100k,1.5M``) for a flag."""
    values = [parse_size(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one budget, e.g. 100k,200k")
    return values


def parse_ints(text: str) -> list[int]:
    """Comma-separated integers for a flag."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def parse_names(text: str) -> list[str]:
    """Comma-separated names for a flag, spaces around them dropped."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one method, e.g. heuristic,searched")
    return names


def parse_number(kind: type, unit: str = "") -> typing.Callable[[str], Any]:
    """A parser of one number for a flag, with the suffixes its ``unit`` allows (see
    :class:`nat.options.Option`)."""

    def parse(text: str) -> Any:
        if unit:
            return _UNIT_PARSERS[unit](text)
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if kind is int:
            if not value.is_integer():
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
            return int(value)
        return value

    return parse


_UNIT_PARSERS = {"count": parse_size, "ms": parse_time, "s": parse_duration, "bytes": parse_bytes}
_UNIT_METAVARS = {"count": "SIZE", "ms": "TIME", "s": "TIME", "bytes": "BYTES"}


def parse_list(item: typing.Callable[[str], Any], choices: tuple | None) -> typing.Callable:
    def parse(text: str) -> list:
        values = [item(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not among {', '.join(choices)}")
        return values

    return parse


def parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _argument(option: Option) -> dict:
    """argparse keywords for ``option``: parser, metavar, help with the spec's default."""
    kind = option.kind
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and typing.get_origin(kind) is not tuple:
        kind = args[0]
    default = option.default
    shown = (
        "none"
        if default in (None, (), {})
        else (",".join(map(str, default)) if isinstance(default, tuple) else default)
    )
    if option.name in ("resolutions", "width_mults"):
        shown = "the space's"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        parse = str if item is str else parse_number(item, option.unit)
        kwargs["type"] = parse_list(parse, option.choices)
        kwargs["metavar"] = "A,B,..." if not option.choices else ",".join(option.choices)
    elif kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is dict:
        kwargs["type"], kwargs["metavar"] = parse_json_object, "JSON"
    elif kind in (int, float):
        kwargs["type"] = parse_number(kind, option.unit)
        kwargs["metavar"] = _UNIT_METAVARS.get(option.unit) or ("N" if kind is int else "X")
    else:
        kwargs["metavar"] = _METAVARS.get(option.name, option.name.split("_")[-1].upper())
        if option.choices:
            kwargs["choices"] = option.choices
            kwargs["metavar"] = "{" + ",".join(option.choices) + "}"
    given = "(default" in option.help
    kwargs["help"] = option.help if given else f"{option.help} (default {shown})"
    return kwargs


def add_spec_options(
    parser: argparse.ArgumentParser,
    select: typing.Callable[[Option], bool] = lambda o: True,
    rename: dict[str, str] | None = None,
) -> None:
    """Add a flag for every spec setting ``select`` accepts, in help sections; ``rename``
    gives some another flag (``{"pretrain_epochs": "--epochs"}``)."""
    rename = rename or {}
    for title, in_group in GROUPS.items():
        chosen = [o for o in OPTIONS.values() if in_group(o) and select(o)]
        if not chosen:
            continue
        hidden = [o for o in chosen if _expert(o)] if not SHOW_ALL else []
        note = f"{len(hidden)} recipe flags more: --help-all" if hidden else None
        group = parser.add_argument_group(title, note)
        for option in chosen:
            argument = _argument(option)
            if option in hidden:
                argument["help"] = argparse.SUPPRESS  # still accepted, and in run.json
            group.add_argument(rename.get(option.name, option.flag), dest=option.name, **argument)


# Whether --help lists the expert flags too (``nat COMMAND --help-all``).
SHOW_ALL = False


def _expert(option: Option) -> bool:
    """The supernet recipe's detail a user rarely changes: every pre-training setting but
    its length and peak learning rate."""
    return option.path[0] == "pretrain" and option.path[-1] not in ("epochs", "lr")


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The spec settings the user typed (absent flags are not in the namespace)."""
    return {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}


def spec_from_args(args: argparse.Namespace, base: RunSpec | None = None) -> RunSpec:
    """A RunSpec of the typed flags on top of ``base`` (default: the spec's defaults)."""
    return RunSpec.from_options(base, **given_options(args))
