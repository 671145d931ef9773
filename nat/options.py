"""Flat options: one name per setting of a :class:`~nat.spec.RunSpec`, shared by the command
line (``--doe-size``), ``nat.search()``'s keywords (``doe_size=``) and ``run.json``; and the
checked conversion of JSON documents into the spec's dataclasses."""

from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import search_spaces

from .spec import OptionError, RunSpec

__all__ = [
    "OPTIONS",
    "Option",
    "build",
    "check_writable_dir",
    "flag_of",
    "space_keys",
    "spec_error_names",
    "unknown_option",
]


# -- flat options: one name per setting, shared by the CLI, nat.search() and JSON -------------
@dataclass(frozen=True)
class Option:
    """A setting of a RunSpec under one flat name (``--flag-name`` on the command line)."""

    name: str
    path: tuple[str, ...]  # keys into RunSpec.to_dict()
    kind: Any  # the field's type (int, float | None, tuple[str, ...], ...)
    default: Any
    help: str
    choices: tuple | None = None
    size: bool = False  # accepts 500k / 2.5M
    time: bool = False  # accepts 5ms / 800us, read as milliseconds
    duration: bool = False  # accepts 30m / 2h / 1h30m / 90s, read as seconds

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def set(self, doc: dict, value: Any) -> None:
        *parents, leaf = self.path
        for key in parents:
            doc = doc.setdefault(key, {})
        if self.path[0] == "space_options" and value is None:
            doc.pop(leaf, None)
        else:
            doc[leaf] = value


# Flat names differing from the field's own name; the rest keep it.
_RENAMED = {
    ("data", "source"): "data",
    ("search", "metrics"): "objectives",
    ("search", "lr"): "adapt_lr",
    ("pretrain", "epochs"): "pretrain_epochs",
    ("pretrain", "lr"): "pretrain_lr",
    ("pretrain", "batch_size"): "pretrain_batch_size",
    ("finetune", "epochs"): "finetune_epochs",
    ("finetune", "label_smoothing"): "finetune_label_smoothing",
    ("finetune", "lr"): "finetune_lr",
    ("finetune", "weight_decay"): "finetune_weight_decay",
    ("finetune", "distill_weight"): "finetune_distill_weight",
}
_DERIVED = {
    ("search", "seed"),
    ("search", "batch_size"),
    ("pretrain", "seed"),
}


def _options() -> dict[str, Option]:
    options: dict[str, Option] = {}
    defaults = RunSpec()

    def walk(cls: type, prefix: tuple[str, ...], instance: Any) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            path = (*prefix, f.name)
            value = getattr(instance, f.name)
            if is_dataclass(value):
                walk(type(value), path, value)
                continue
            if path in _DERIVED:
                continue
            name = _RENAMED.get(path, f.name)
            assert name not in options, f"two settings are called {name}"
            options[name] = Option(
                name,
                path,
                hints[f.name],
                value,
                f.metadata.get("help", ""),
                f.metadata.get("choices"),
                f.metadata.get("size", False),
                f.metadata.get("time", False),
                f.metadata.get("duration", False),
            )
            if path == ("space_options",):  # the common space options get flags of their own
                for key, help_text in (
                    ("resolutions", "input resolutions to search, in px"),
                    ("width_mults", "width multiplier choices"),
                ):
                    kind = tuple[int, ...] if key == "resolutions" else tuple[float, ...]
                    options[key] = Option(
                        key, (*path, key), kind | None, None, help_text + " (default: the space's)"
                    )

    walk(RunSpec, (), defaults)
    return options


def build(cls: type, doc: dict, where: str, prefix: tuple[str, ...] = ()) -> Any:
    """``cls`` from its JSON dict: nested dataclasses, lists back to tuples, unknown keys
    refused with the nearest known one."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in doc.items():
        if key not in known:
            error = unknown_option(key, known, f"key in {where}")
            error.option = (*prefix, key)
            raise error
        kind = hints[key]
        if is_dataclass(kind):
            if not isinstance(value, dict):
                raise OptionError((*prefix, key), f"must be a JSON object in {where}")
            value = build(kind, value, where, (*prefix, key))
        else:
            value = _coerce((*prefix, key), kind, value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except OptionError as err:
        if isinstance(err.option, str) and err.option in known:
            err.option = (*prefix, err.option)
        raise


def _coerce(name: str | tuple[str, ...], kind: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``kind``; lists become tuples."""
    args = typing.get_args(kind)
    if value is None:
        if type(None) in args:
            return None
        raise OptionError(name, "must be given (null is not allowed)")
    if type(None) in args:
        kind = next(a for a in args if a is not type(None))
        args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise OptionError(name, f"must be a list, got {value!r}")
        return tuple(_coerce(name, args[0], v) for v in value)
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise OptionError(name, f"must be a JSON object, got {value!r}")
        return value
    if kind is bool or isinstance(value, bool):
        if kind is not bool or not isinstance(value, bool):
            raise OptionError(name, f"must be {kind.__name__}, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise OptionError(name, f"must be an integer, got {value!r}")
        return value
    if kind is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OptionError(name, f"must be a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise OptionError(name, f"must be a string, got {value!r}")
        return value
    return value


def spec_error_names(build: typing.Callable[[], Any]) -> Any:
    """Run ``build``; an OptionError from it is raised again naming the flag, not the field."""
    try:
        return build()
    except OptionError as err:
        raise err.named(flag_of(err.option)) from None


def flag_of(option: str | tuple[str, ...]) -> str:
    """The user's name for a setting: ``--doe-size`` for ``doe_size`` or its path
    ``("search", "doe_size")``, ``--data`` for ``("data", "source")``."""
    if isinstance(option, tuple):
        matches = [o for o in OPTIONS.values() if o.path == option]
        if not matches:  # a section, e.g. ("search",)
            return option[-1]
        return matches[0].flag
    if option in OPTIONS:
        return OPTIONS[option].flag
    matches = [o for o in OPTIONS.values() if o.path[-1] == option]
    return matches[0].flag if len(matches) == 1 else option


OPTIONS: dict[str, Option] = _options()


def unknown_option(
    name: str, known: typing.Iterable[str], where: str, listed: bool = False
) -> OptionError:
    """The error for an unknown ``name``: the nearest of ``known``, and all of them with
    ``listed``."""
    known = list(known)
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    listing = f" (known: {', '.join(known)})" if listed else ""
    return OptionError(name, f"unknown {where}{hint}{listing}")


def check_writable_dir(folder: str | os.PathLike, option: str) -> Path:
    """``folder`` is a directory, or can be made one, that accepts files: tried with a
    temporary file in its nearest existing ancestor, removed at once (so a read-only file
    system is caught even for root)."""
    import tempfile

    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise OptionError(option, f"{path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OptionError(option, f"{path} cannot be made: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OptionError(option, f"{path} is not writable ({err.strerror})") from None
    return path


def space_keys(name: str) -> list[str]:
    """The option names the search space ``name`` takes."""
    import inspect

    if name not in search_spaces.list_spaces():
        raise OptionError(
            "space", f"unknown space {name!r}: choose one of {search_spaces.list_spaces()}"
        )
    cls = type(search_spaces.get(name))
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
