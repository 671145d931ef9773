"""Neural Architecture Transfer engine: search, surrogate, heuristic, training, CLI.

``nat.search(...)`` runs a whole search; ``nat.RunSpec`` describes one as plain data (see
:mod:`nat.spec`), and :func:`nat.run.run` runs a RunSpec.
"""

from __future__ import annotations

from typing import Any

from .spec import RunSpec

__all__ = ["RunSpec", "search"]


def search(progress: bool = True, resume: bool = False, overwrite: bool = False, **options: Any):
    """Search the Pareto front of accuracy against parameters / MACs on a dataset; returns a
    :class:`~nat.engine.loop.SearchResult`.

    Keywords are the flat options of :data:`nat.spec.OPTIONS`, the same names as ``nat
    search``'s flags (``max_params=300_000``, ``iterations=3``, ``data="digits"``...); an
    unknown one is an error naming the nearest known one. With ``out``, the run folder gets
    run.json, archive.json, pareto.csv, pareto.png, history.csv, the front's subnets,
    report.md and a resume/ snapshot after every iteration. Settings are checked before torch
    is even imported, so a mistake costs a second, not a pre-training.
    """
    from .folder import preflight

    spec = preflight(RunSpec.from_options(**options), resume, overwrite)
    from .run import run  # torch loads slowly: only once the settings are known to be good

    return run(spec, progress=progress, resume=resume, overwrite=overwrite)
