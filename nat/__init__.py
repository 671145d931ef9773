"""Neural Architecture Transfer engine: search, surrogate, heuristic, training, CLI.

``nat.search(...)`` runs a whole search; see :func:`nat.api.search`.
"""


def search(*args, **kwargs):
    """Run a NAT search; see :func:`nat.api.search` (imported lazily: torch loads slowly)."""
    from .api import search as _search

    return _search(*args, **kwargs)


__all__ = ["search"]
