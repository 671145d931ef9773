"""Measured CPU latency: a per-unit table built on this machine, and a subnet's predicted
latency as the sum over its units (stem, each block, head), vectorised over a population.

Each distinct unit a space can hold is built with the layers a static subnet uses, run at
batch 1 with fixed threads after a warm-up, and its fastest time recorded. Runtimes:
``onnxruntime`` (the default: what an exported ``model.onnx`` runs on) and ``torch`` (eager,
``torch.inference_mode``). A unit's time includes one call's fixed cost (binding inputs,
allocating outputs), which a whole model pays once; the table measures that cost on an empty
model and the prediction counts it once. Ten random whole subnets, exported as a run exports
them, calibrate the sum: a whole network runs slower than its units apart.

A table is only valid on the machine and libraries that measured it: it records the CPU model,
threads, runtime and library versions, and :func:`load_table` refuses one whose record differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import search_spaces
from search_spaces import SearchSpace
from supernets.base import build_static, build_unit

from .data.sources import resolve_cache_dir
from .io.files import write_json
from .spec import LATENCY_RUNTIMES, SearchConfig

__all__ = [
    "LatencyTable",
    "StaleTableError",
    "build_table",
    "fastest_ms",
    "latency_table_of",
    "load_or_build",
    "load_table",
    "machine",
    "reference_calls",
    "runner",
    "speed_factor",
]

FORMAT = 1
WARMUP, REPEATS, ROUNDS = 3, 8, 6  # per round: warm-up and timed runs of each call
CALIBRATION, CALIBRATION_SEED = 10, 20261126  # whole subnets the unit sum is fitted to


class StaleTableError(ValueError):
    """A latency table measured on another machine, runtime, thread count or library version."""


def machine(runtime: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """What a table's figures depend on besides the units: CPU, threads, runtime, versions,
    and the precision of the models timed (recorded when int8: fp32 tables predate it)."""
    if runtime not in LATENCY_RUNTIMES:
        raise ValueError(f"unknown latency runtime {runtime!r}: choose {LATENCY_RUNTIMES}")
    if precision == "int8" and runtime != "onnxruntime":
        raise ValueError(
            "int8 latency is measured with onnxruntime: use --latency-runtime onnxruntime"
        )
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    record = {
        "cpu": _cpu_model(),
        "threads": int(threads),
        "runtime": runtime,
        "torch": torch.__version__,
    }
    if runtime == "onnxruntime":
        import onnx
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
        record["onnx"] = onnx.__version__
    if precision != "fp32":
        record["precision"] = precision
    return record


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


@dataclass
class LatencyTable:
    """Milliseconds (fastest of repeated runs) of every unit of one space (rows of
    ``search_spaces.UNIT_FIELDS``) at batch 1, with ``call_ms``, one call's fixed cost, on the
    machine ``machine``."""

    space: dict[str, Any]
    num_classes: int
    machine: dict[str, Any]
    rows: np.ndarray  # (m, len(UNIT_FIELDS)) int64, sorted
    ms: np.ndarray  # (m,)
    call_ms: float
    build_seconds: float
    scale: float = 1.0  # calibration: predicted = scale * (sum of units) ** power
    power: float = 1.0

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(
            -1, len(search_spaces.UNIT_FIELDS)
        )
        self.ms = np.asarray(self.ms, dtype=np.float64)
        order = np.lexsort(self.rows.T[::-1])
        self.rows, self.ms = self.rows[order], self.ms[order]
        self._space = search_spaces.from_dict(self.space)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted milliseconds at batch 1 of encodings ``x`` ((n_var,) or (n, n_var)) of the
        table's space: the sum of their units' times, with one call's fixed cost counted
        once, calibrated on whole subnets (``scale * sum ** power``). Shape (n,)."""
        return self.scale * self.unit_sum(x) ** self.power

    def unit_sum(self, x: np.ndarray) -> np.ndarray:
        """The uncalibrated prediction: the units' times, one call's fixed cost counted once."""
        rows, active = self._space.units(x, self.num_classes)
        index = self._lookup(rows[active])
        unit_ms = np.zeros(active.shape)
        unit_ms[active] = self.ms[index] - self.call_ms
        return unit_ms.sum(axis=1) + self.call_ms

    def _lookup(self, queries: np.ndarray) -> np.ndarray:
        """Positions of ``queries`` (k, F) among the table's rows, found by binary search on
        the rows viewed as byte strings; a unit the table lacks is an error."""
        width = self.rows.shape[1] * 8
        keys = np.ascontiguousarray(self.rows).view(f"V{width}").ravel()
        wanted = np.ascontiguousarray(queries, dtype=np.int64).view(f"V{width}").ravel()
        # Byte order is not numeric order, so sort the byte strings themselves.
        order = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[order], wanted), 0, len(keys) - 1)
        found = order[pos]
        missing = np.flatnonzero(keys[found] != wanted)
        if len(missing):
            unit = dict(zip(search_spaces.UNIT_FIELDS, queries[missing[0]].tolist(), strict=True))
            raise StaleTableError(
                f"the latency table has no unit {unit}: it was built for another space; rebuild "
                "it with nat latency-table and this run's space options"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["rows"], doc["ms"] = self.rows.tolist(), self.ms.tolist()
        return {"format": FORMAT, "fields": list(search_spaces.UNIT_FIELDS), **doc}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LatencyTable:
        if doc.get("format") != FORMAT or doc.get("fields") != list(search_spaces.UNIT_FIELDS):
            raise StaleTableError(
                "the latency table was written by another version of nat: rebuild it with "
                "nat latency-table"
            )
        fields = ("space", "num_classes", "machine", "rows", "ms", "call_ms", "build_seconds")
        return cls(**{k: doc[k] for k in fields}, scale=doc["scale"], power=doc["power"])

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())


def load_table(
    path: str | os.PathLike,
    space: SearchSpace | None = None,
    num_classes: int | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> LatencyTable:
    """The table at ``path``, refused (:class:`StaleTableError`) when it was measured on
    another machine or library version, or with another runtime, thread count, precision,
    space or class count than the ones given (None: the table's own)."""
    try:
        table = LatencyTable.from_dict(json.loads(Path(path).read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StaleTableError(f"{path} is not a latency table ({err}): rebuild it") from None
    here = machine(
        runtime or table.machine.get("runtime", "onnxruntime"),
        threads or table.machine.get("threads", 1),
        precision or table.machine.get("precision", "fp32"),
    )
    if table.machine != here:
        keys = {**table.machine, **here}
        diff = {
            k: (table.machine.get(k), here.get(k))
            for k in keys
            if table.machine.get(k) != here.get(k)
        }
        what = ", ".join(f"{k} {a!r}, here {b!r}" for k, (a, b) in diff.items())
        raise StaleTableError(
            f"latency table {path} was measured elsewhere ({what}): its times do not hold "
            "here; rebuild it with nat latency-table"
        )
    if space is not None and table.space != space.to_dict():
        raise StaleTableError(
            f"latency table {path} is for space {table.space}, not {space.to_dict()}: rebuild it"
        )
    if num_classes is not None and table.num_classes != num_classes:
        raise StaleTableError(
            f"latency table {path} is for {table.num_classes} classes, not {num_classes}: "
            "rebuild it"
        )
    return table


def default_path(
    space: SearchSpace, num_classes: int, runtime: str, threads: int, precision: str = "fp32"
) -> Path:
    """Where the cache keeps the table of this space on this machine."""
    record = machine(runtime, threads, precision)
    key = json.dumps([space.to_dict(), num_classes, record], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return resolve_cache_dir(None) / "latency" / f"{space.name}-{digest}.json"


def latency_table_of(
    config: SearchConfig,
    space: SearchSpace,
    num_classes: int,
    log: Callable[[str], None] | None = None,
) -> LatencyTable | None:
    """The table a search with ``config`` needs: None unless latency is an objective or a
    budget."""
    if "latency" not in config.metrics and config.max_latency is None:
        return None
    return load_or_build(
        space,
        num_classes,
        config.latency_runtime,
        config.latency_threads,
        config.latency_table,
        log,
        config.precision,
    )


def load_or_build(
    space: SearchSpace,
    num_classes: int,
    runtime: str = "onnxruntime",
    threads: int = 1,
    path: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> LatencyTable:
    """The cached table of ``space`` on this machine, built (and cached) when there is none or
    the cached one is stale. An explicit ``path`` must hold a valid table: it is never
    overwritten. ``precision``: of the models timed (int8: quantised as a run exports them)."""
    if path is not None:
        return load_table(path, space, num_classes, runtime, threads, precision)
    path = default_path(space, num_classes, runtime, threads, precision)
    if path.exists():
        try:
            return load_table(path, space, num_classes, runtime, threads, precision)
        except StaleTableError as err:
            if log:
                log(f"rebuilding the latency table: {err}")
    table = build_table(space, num_classes, runtime, threads, log=log, precision=precision)
    table.save(path)
    return table


def build_table(
    space: SearchSpace,
    num_classes: int,
    runtime: str = "onnxruntime",
    threads: int = 1,
    rounds: int = ROUNDS,
    calibration: int = CALIBRATION,
    log: Callable[[str], None] | None = None,
    dynamo: bool = True,
    precision: str = "fp32",
) -> LatencyTable:
    """Measure every distinct unit of ``space`` (see ``SearchSpace.covering_population``),
    and ``calibration`` random whole subnets (0: none) to fit the map from the units' sum to
    a whole subnet's time, all in each of ``rounds`` interleaved rounds. The whole subnets are
    exported as ``nat search`` ships them (``dynamo``, about 5 s each), or with the fast
    exporter the units use (``dynamo=False``: quick checks of the code path).

    Whole subnets run slower than their units alone: on this machine by 1-20 % in
    onnxruntime and 25-75 % in torch (more cache misses, more allocation), growing with size.
    A power law ``scale * sum ** power`` fitted on random subnets, exported as ``nat search``
    exports them, takes the median error from up to 43 % to under 10 % (docs/benchmarks.md)."""
    record = machine(runtime, threads, precision)
    start = time.perf_counter()
    rows, active = space.units(space.covering_population(), num_classes)
    unique = np.unique(rows[active], axis=0)
    if log:
        log(f"measuring {len(unique)} units of {space.name} with {runtime}, {threads} thread(s)")
    torch.manual_seed(0)
    with _threads(threads):
        # One call's fixed cost: a model that does next to nothing, timed alongside the units.
        calls = [runner(nn.ReLU(), (1, 3, 8, 8), runtime, threads)]
        for row in unique:
            module, shape = build_unit(space.family, space.stem, row)
            calls.append(runner(module, shape, runtime, threads, precision=precision))
        X, whole = reference_calls(
            space, num_classes, runtime, threads, calibration, dynamo, precision
        )
        calls += whole
        if log:
            log(f"  built in {time.perf_counter() - start:.0f} s; timing {rounds} rounds")
        ms = fastest_ms(calls, threads, rounds)
    table = LatencyTable(
        space=space.to_dict(),
        num_classes=num_classes,
        machine=record,
        rows=unique,
        ms=ms[1 : 1 + len(unique)],
        call_ms=float(ms[0]),
        build_seconds=0.0,
    )
    if calibration >= 2:
        whole = ms[1 + len(unique) :]
        power, log_scale = np.polyfit(np.log(table.unit_sum(X)), np.log(whole), 1)
        table.scale, table.power = float(np.exp(log_scale)), float(power)
    table.build_seconds = time.perf_counter() - start
    return table


def reference_calls(
    space: SearchSpace,
    num_classes: int,
    runtime: str = "onnxruntime",
    threads: int = 1,
    count: int = CALIBRATION,
    dynamo: bool = True,
    precision: str = "fp32",
) -> tuple[np.ndarray, list[Callable[[], Any]]]:
    """The whole subnets a table of ``space`` is calibrated on (the same ``count`` encodings
    every time), and a call running each (see :func:`runner`)."""
    X = space.sample(count, np.random.default_rng(CALIBRATION_SEED))
    calls = []
    for x in X:
        arch = space.decode(x)
        model = build_static(arch, num_classes).eval()
        side = arch.resolution
        shape = (1, 3, side, side)
        calls.append(runner(model, shape, runtime, threads, dynamo=dynamo, precision=precision))
    return X, calls


def speed_factor(table: LatencyTable, X: np.ndarray, measured_ms: np.ndarray) -> float:
    """How much slower the machine runs now than when ``table`` was built: the median of
    measured ÷ predicted over reference subnets ``X`` (see :func:`reference_calls`) timed
    now. This machine's speed drifts by up to ±25 % from one minute to the next, so a
    prediction is an estimate at the speed of the build; time the references alongside the
    models to compare with, and multiply predictions by this factor to compare shapes."""
    return float(np.median(np.asarray(measured_ms) / table.predict(X)))


@contextlib.contextmanager
def _threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runner(
    model: nn.Module,
    shape: tuple[int, ...],
    runtime: str = "onnxruntime",
    threads: int = 1,
    onnx_bytes: bytes | None = None,
    dynamo: bool = False,
    precision: str = "fp32",
) -> Callable[[], Any]:
    """A call running ``model`` once on a fixed random input of ``shape``: in onnxruntime
    (``threads`` intra-op threads) or torch eager (run it inside ``torch.inference_mode``
    with ``threads`` threads, as :func:`fastest_ms` does). ``onnx_bytes``: run that ONNX
    model instead of exporting ``model``. The export is TorchScript-based, 30x faster than the
    dynamo path for a unit, unless ``dynamo``: then as :func:`nat.io.deploy.export_onnx`
    makes it (dynamic batch), the file a run ships. ``precision`` int8: the model quantised
    as a run's ``model.int8.onnx`` is (calibrated on random inputs: ranges do not change
    the time)."""
    x = torch.randn(shape)
    if runtime == "torch":
        model = model.eval()
        return lambda: model(x)
    if runtime != "onnxruntime":
        raise ValueError(f"unknown latency runtime {runtime!r}: choose {LATENCY_RUNTIMES}")
    from .io.deploy import onnx_session

    if onnx_bytes is None:
        onnx_bytes = _export(model.eval(), x, legacy=not dynamo)
    if precision == "int8":
        from .io.footprint import quantize_int8

        onnx_bytes = quantize_int8(onnx_bytes, [torch.randn(shape).numpy() for _ in range(4)])
    session = onnx_session(onnx_bytes, threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def fastest_ms(
    calls: Sequence[Callable[[], Any]], threads: int = 1, rounds: int = ROUNDS
) -> np.ndarray:
    """Milliseconds of each call: the fastest of all its runs, made in ``rounds`` rounds
    that each warm up and time every call in turn. This machine's speed drifts: one model's
    median moved between 1.7 and 3.4 ms within two minutes, its fastest run between 1.6 and
    2.6 ms. Interleaving spreads every call over the same stretch of time, and the fastest
    run is the one the rest of the machine disturbed least."""
    fastest = np.full(len(calls), np.inf)
    with _threads(threads), torch.inference_mode():
        for _ in range(rounds):
            for i, call in enumerate(calls):
                for _ in range(WARMUP):
                    call()
                for _ in range(REPEATS):
                    begin = time.perf_counter_ns()
                    call()
                    fastest[i] = min(fastest[i], time.perf_counter_ns() - begin)
    return fastest / 1e6


def _export(model: nn.Module, x: torch.Tensor, legacy: bool) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if legacy:
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"])
            return buffer.getvalue()
        program = torch.onnx.export(
            model,
            (x.expand(2, *x.shape[1:]),),  # traced at batch 2: batch 1 would be fixed
            dynamo=True,
            input_names=["images"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()
