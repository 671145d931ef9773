"""Flat options: one name per setting of a tree of dataclasses (:func:`options_of`; the
:class:`~nat.spec.RunSpec`'s are :data:`nat.spec.OPTIONS`), shared by the command line
(``--doe-size``), ``nat.search()``'s keywords (``doe_size=``) and ``run.json``; and the
checked conversion of JSON documents into those dataclasses (:func:`build`)."""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from .fields import OptionError, unknown_option

__all__ = ["Option", "build", "options_of", "take_derived"]


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
    # "count": accepts 500k / 2.5M; "ms": 5ms / 800us, read as milliseconds; "s": 30m / 2h /
    # 1h30m / 90s, read as seconds; "bytes": 256KB / 1.5MB, read as bytes; "": plain numbers.
    unit: str = ""

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


def take_derived(
    doc: dict, derived: tuple[tuple[str, ...], ...], defaults: dict[str, Any], where: str
) -> None:
    """Drop from ``doc`` a part's copy of a setting the whole run hands down (``derived``
    paths, each set at the top under its last key; ``defaults`` when absent there): one that
    differs from the run's would be silently overruled, so it is an error naming the key."""
    for *parents, name in derived:
        section = doc
        for key in parents:  # copied on the way down: the caller's document stays as it was
            if not isinstance(section.get(key), dict):
                break
            section[key] = section = dict(section[key])
        else:
            if name not in section:
                continue
            value = section.pop(name)
            run_value = doc.get(name, defaults[name])
            if value != run_value:
                raise OptionError(
                    name,
                    f"{where} sets {'.'.join(parents)}.{name} = {value!r}, but {name} is the "
                    f'run\'s ({run_value!r}): set the top-level "{name}" instead',
                )


def options_of(
    root: type,
    renamed: dict[tuple[str, ...], str],
    derived: tuple[tuple[str, ...], ...],
) -> dict[str, Option]:
    """The flat options of the dataclass ``root`` (its defaults from ``root()``), one per
    field path: named as the field, or as ``renamed`` says; none for the paths in
    ``derived`` (set from other settings)."""
    options: dict[str, Option] = {}
    defaults = root()

    def walk(cls: type, prefix: tuple[str, ...], instance: Any) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            path = (*prefix, f.name)
            value = getattr(instance, f.name)
            if is_dataclass(value):
                walk(type(value), path, value)
                continue
            if path in derived:
                continue
            name = renamed.get(path, f.name)
            assert name not in options, f"two settings are called {name}"
            options[name] = Option(
                name,
                path,
                hints[f.name],
                value,
                f.metadata.get("help", ""),
                f.metadata.get("choices"),
                f.metadata.get("unit", ""),
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

    walk(root, (), defaults)
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
