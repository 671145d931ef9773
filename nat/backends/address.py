"""Ray cluster addresses, checked without importing Ray: a typo or an unreachable head is
reported in a second, before any data is loaded or any supernet trained."""

from __future__ import annotations

import socket

from ..fields import OptionError

__all__ = ["check_address", "split_address"]


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'ray://host:port'; None for 'auto'."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OptionError(
            "address", f"{address!r}: expected 'auto', 'host:port' or 'ray://host:port'"
        )
    return host, int(port)


def check_address(address: str, timeout: float = 3.0) -> None:
    """Raise OptionError unless something listens at ``address`` ('auto' is not checked)."""
    target = split_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise OptionError(
            "address",
            f"cannot reach a Ray cluster at {address} ({err}): start one with "
            "`ray start --head` or fix the address",
        ) from err
