"""Neural Architecture Transfer engine: search, surrogate, heuristic, training, CLI.

``nat.search(...)`` runs a whole search; ``nat.RunSpec`` describes one as plain data (see
:mod:`nat.spec`), :func:`nat.run_spec` runs a RunSpec and :func:`nat.resume` continues a
stopped run: ``nat search`` and the benchmarks take the same path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .spec import RunSpec

__all__ = ["RunSpec", "resume", "run_spec", "search"]


def run_spec(
    spec: RunSpec, *, resume: bool = False, overwrite: bool = False, progress: bool = True
):
    """Check ``spec`` once (:func:`nat.folder.preflight`: options, paths, Ray address, the
    run folder, budgets against the space), then run it (:func:`nat.run.run_checked`);
    returns a :class:`~nat.engine.loop.SearchResult`. The checks come before torch is even
    imported, so a mistake costs a second, not a pre-training."""
    from .folder import preflight

    spec = preflight(spec, resume, overwrite)
    from .run import run_checked  # torch loads slowly: only once the settings are known good

    return run_checked(spec, progress=progress, resume=resume, overwrite=overwrite)


def search(progress: bool = True, resume: bool = False, overwrite: bool = False, **options: Any):
    """Search the Pareto front of accuracy against parameters / MACs on a dataset; returns a
    :class:`~nat.engine.loop.SearchResult`.

    Keywords are the flat options of :data:`nat.spec.OPTIONS`, the same names as ``nat
    search``'s flags (``max_params=300_000``, ``iterations=3``, ``data="digits"``...); an
    unknown one is an error naming the nearest known one. With ``out``, the run folder gets
    run.json, archive.json, pareto.csv, pareto.png, history.csv, the front's subnets,
    report.md and a resume/ snapshot after every iteration.
    """
    from .transfer import spec_for_checkpoint

    # With a checkpoint, the space the source supernet was trained for, as `nat search` does.
    spec = spec_for_checkpoint(RunSpec.from_options(**options), options)
    return run_spec(spec, progress=progress, resume=resume, overwrite=overwrite)


def resume(out: str | Path, progress: bool = True, **backend: Any):
    """Continue the run in folder ``out`` from where it stopped (pre-training or search),
    with its saved settings; ``backend``: ``workers``, ``address`` or ``adapt_workers`` to
    use this time."""
    from .folder import open_run

    spec = RunSpec.from_options(open_run(out), **backend)
    return run_spec(spec, progress=progress, resume=True)
