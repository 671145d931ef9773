"""The benchmark suite, one module per benchmark; :mod:`.common` holds what they share and
the one renderer. Each ``bench_*`` takes the shared :class:`~.common.Bench` and returns a
:class:`~.common.Result` (data, tables, plots); :func:`run_suite` renders them."""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

from .cil import bench_cil
from .common import FULL, QUICK, Bench, machine, render
from .deploy import bench_deploy
from .fidelity import bench_fidelity
from .growth import bench_growth
from .heuristic import bench_heuristic
from .latency import bench_latency
from .multiexit import bench_multiexit
from .pruning import bench_pruning
from .quality import bench_quality
from .recipe import bench_recipe
from .scaling import bench_scaling
from .search import bench_search
from .speed import bench_speed
from .surrogate import bench_surrogate
from .tiny import bench_tiny
from .transfer import bench_transfer

__all__ = ["BENCHES", "parse_overrides", "run_suite"]

BENCHES = {
    "search": bench_search,
    "heuristic": bench_heuristic,
    "fidelity": bench_fidelity,
    "surrogate": bench_surrogate,
    "speed": bench_speed,
    "growth": bench_growth,
    "quality": bench_quality,
    "recipe": bench_recipe,
    "cil": bench_cil,
    "deploy": bench_deploy,
    "latency": bench_latency,
    "pruning": bench_pruning,
    "multiexit": bench_multiexit,
    "transfer": bench_transfer,
    "scaling": bench_scaling,
    "tiny": bench_tiny,
}


def parse_overrides(pairs: list[str]) -> dict:
    """``NAME=JSON`` pairs as settings overrides (JSON lists become tuples, as the settings
    hold them); an unknown name or a value that is not JSON is a ValueError naming it."""
    known = {f.name for f in fields(FULL)}
    overrides = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in known:
            raise ValueError(
                f"--set {pair!r}: give NAME=JSON with NAME one of the settings "
                "(scripts/benchmarks/settings.py)"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--set {name}: {text!r} is not JSON ({err}); quote strings as '\"resnet\"'"
            ) from None
        overrides[name] = tuple(value) if isinstance(value, list) else value
    return overrides


def run_suite(
    names: list[str],
    data: str,
    out: str | Path,
    quick: bool,
    overrides: dict | None = None,
) -> None:
    """Run the benchmarks ``names`` in order; each writes ``<name>.md`` and ``<name>.json``
    (plus plots) under ``out``, and a run of all of them ``summary.md``. ``overrides``:
    settings replaced (:func:`parse_overrides`)."""
    settings = replace(QUICK if quick else FULL, **(overrides or {}))
    bench = Bench(settings, data, Path(out))
    info = machine()
    header = (
        f"# Benchmarks ({'quick' if quick else 'full'} settings), {info['date']}: "
        f"{info['nproc']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, CUDA {'yes' if info['cuda'] else 'no'}; "
        f"data {Path(data).name}\n"
    )
    print(header, flush=True)
    start_all = time.perf_counter()
    summary = [header]
    for name in names:
        start = time.perf_counter()
        result = BENCHES[name](bench)
        text = render(name, result, time.perf_counter() - start, bench, info)
        print(text, flush=True)
        summary.append(text)
    total = time.perf_counter() - start_all
    summary.append(f"\nTotal: {total:.0f} s ({total / 60:.1f} min)\n")
    print(summary[-1], flush=True)
    if set(names) == set(BENCHES):
        from nat.io.files import atomic_write

        atomic_write(bench.out / "summary.md", lambda f: f.write("".join(summary).encode()))
