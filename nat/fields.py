"""The pieces every settings dataclass of a run uses: the error that names a bad setting, and
the field metadata and range checks the command line is derived from."""

from __future__ import annotations

from typing import Any

__all__ = ["OptionError"]


class OptionError(ValueError):
    """A setting is out of range or inconsistent. ``option`` is the setting's field name, or
    its path in the spec; :class:`RunSpec` rewrites the message to name the user's flag."""

    def __init__(self, option: str | tuple[str, ...], message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message

    def named(self, name: str) -> OptionError:
        """The same error, its message starting with ``name`` (a flag) instead."""
        self.args = (f"{name}: {self.message}",)
        return self


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


def _at_least(obj: Any, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise OptionError(name, f"must be at least {minimum:g}, got {value}")
