"""The pieces every settings dataclass of a run uses: the error that names a bad setting, and
the field metadata and range checks the command line is derived from, and the checks of
names and folders that errors about settings share."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from search_spaces.arch import MAX_SIDE as MAX_IMAGE_SIDE

__all__ = [
    "MAX_COUNT",
    "MAX_IMAGE_SIDE",
    "MAX_SEED",
    "OptionError",
    "at_least",
    "check_writable_dir",
    "option_help",
    "unknown_option",
    "within",
]


class OptionError(ValueError):
    """A setting is out of range or inconsistent. ``option`` is the user's flag where the
    raiser knows it (``--out``), else the setting's field name or its path in the spec:
    :func:`nat.spec.spec_error_names` then rewrites the message to name the flag."""

    def __init__(self, option: str | tuple[str, ...], message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message

    def named(self, name: str) -> OptionError:
        """The same error, its message starting with ``name`` (a flag) instead: how
        :func:`nat.spec.spec_error_names` renames a field's error."""
        self.args = (f"{name}: {self.message}",)
        return self


# Upper ends of settings that would otherwise exhaust memory or overflow a library before
# failing: a seed numpy and torch both take, and counts of subnets or batches far past any
# useful run. Image sides end where architectures do (search_spaces.arch.MAX_SIDE).
MAX_SEED = 2**32 - 1
MAX_COUNT = 100_000


def option_help(text: str, **extra: Any) -> dict:
    """Field metadata: the flag's help text and what the command line derives from it."""
    return {"help": text, **extra}


def at_least(obj: Any, minimum: float, *names: str) -> None:
    """Refuse any of the settings ``names`` of ``obj`` below ``minimum``."""
    within(obj, minimum, None, *names)


def within(obj: Any, minimum: float, maximum: float | None, *names: str) -> None:
    """Refuse any of the settings ``names`` of ``obj`` outside ``minimum..maximum``."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise OptionError(name, f"must be at least {minimum:g}, got {value}")
        if maximum is not None and value > maximum:
            raise OptionError(name, f"must be at most {maximum:,}, got {value:,}")


def unknown_option(
    name: str, known: Iterable[str], where: str, listed: bool = False
) -> OptionError:
    """The error for an unknown ``name``: the nearest of ``known``, and all of them with
    ``listed``."""
    import difflib

    known = list(known)
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    listing = f" (known: {', '.join(known)})" if listed else ""
    return OptionError(name, f"unknown {where}{hint}{listing}")


def check_writable_dir(folder: str | os.PathLike, option: str) -> Path:
    """``folder`` is a directory, or can be made one, that accepts files: tried with a
    temporary file in its nearest existing ancestor, removed at once (so a read-only file
    system is caught even for root). Errors name ``option``."""
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


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """The validation and test shares of each class: each strictly between 0 and 1, and
    together leaving training images. Errors name the setting."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise OptionError(name, f"must be strictly between 0 and 1, got {value}")
    if val_fraction + test_fraction >= 1:
        raise OptionError(
            "val_fraction",
            f"with test_fraction it must leave training images, got "
            f"{val_fraction} + {test_fraction}",
        )
