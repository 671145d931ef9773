"""Neural Architecture Transfer engine: search, surrogate, heuristic, training, CLI.

``nat.search(...)`` runs a whole search (see :func:`nat.run.search`); ``nat.RunSpec``
describes one as plain data (see :mod:`nat.spec`).
"""

from .spec import RunSpec


def search(**options):
    """Run a NAT search; see :func:`nat.run.search` (imported lazily: torch loads slowly)."""
    from .run import search as _search

    return _search(**options)


__all__ = ["RunSpec", "search"]
