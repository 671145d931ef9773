"""What a search run leaves in its folder: the handed-back models (``front/NN``), pareto.csv,
pareto.png, history.csv and report.md (archive.json and supernet.pt are written during the
run). The front is drawn from trained accuracy; the archive's inherited accuracies are a
faint second layer, and a front subnet left untrained is marked so wherever it appears."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from search_spaces import Arch

from .data import DataSplits
from .engine.loop import NATSearch, SearchResult
from .io.checkpoint import export_subnet
from .io.deploy import INPUT_FORMAT, OnnxMismatchError, sample_images
from .io.files import atomic_write, save_figure, write_json
from .quantize import INT8_CALIBRATION_IMAGES, quantize_subnet
from .report_text import report_text
from .training.evaluate import SubnetEvaluator

__all__ = ["handed_back", "pareto_rows", "write_outputs"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def handed_back(result: SearchResult) -> list[tuple[str, object]]:
    """(folder, nat.handback.FrontModel) of every model the run hands back, smallest target
    first, the model at the full budget last: ``front/00``, ``front/01``, ..."""
    return [(f"front/{rank:02d}", m) for rank, m in enumerate(result.models)]


def pareto_rows(result: SearchResult) -> list[dict]:
    """One row per handed-back model (trained), then per subnet of the archive's front that
    was not handed back (untrained: inherited weights, no folder), by size."""
    space, entries = result.archive.space, result.archive.entries
    handed = handed_back(result)
    rest = sorted(set(result.front) - {m.index for _, m in handed}, key=lambda i: entries[i].params)
    rows = []
    for i, folder, m in [*((m.index, f, m) for f, m in handed), *((i, "", None) for i in rest)]:
        e, arch = entries[i], space.decode(entries[i].x)
        rows.append(
            {
                "folder": folder,
                "trained": bool(m is not None and m.trained),
                "target": m.target if m is not None else "",
                "on_front": i in result.front,
                "inherited_accuracy": e.accuracy,  # validation, with the final supernet
                "trained_val_accuracy": m.trained_val_accuracy if m is not None else "",
                "val_accuracy": m.val_accuracy if m is not None else e.accuracy,
                "test_accuracy": m.test_accuracy if m is not None else "",
                "inherited_test_accuracy": m.inherited_test_accuracy if m is not None else "",
                "epochs": round(m.epochs, 2) if m is not None else 0,
                "train_seconds": round(m.seconds, 1) if m is not None else 0,
                "params": e.params,
                "macs": e.macs,
                "latency_ms": e.latency,
                "peak_memory_bytes": e.peak_memory,
                "model_size_bytes": e.model_size,
                "resolution": arch.resolution,
                "depths": " ".join(map(str, arch.depths)),
                "source": e.source,
                "iteration": e.iteration,
                "x": " ".join(map(str, e.x)),
            }
        )
    return rows


def _plot(path: Path, result: SearchResult, rows: list[dict]) -> None:
    archive = result.archive
    entries = archive.entries
    panels = [("macs", "MACs (M)", 1e6), ("params", "parameters (M)", 1e6)]
    if archive.latency is not None:
        panels.append(("latency", "predicted latency (ms, batch 1)", 1.0))
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels))
    trained = sorted((r for r in rows if r["trained"]), key=lambda r: r["params"])
    untrained = [r for r in rows if not r["trained"]]
    index_of = {" ".join(map(str, e.x)): e for e in entries}
    for ax, (metric, unit, scale) in zip(axes, panels, strict=True):

        def at(row: dict, metric: str = metric, scale: float = scale) -> float:
            return getattr(index_of[row["x"]], metric) / scale

        ax.scatter(
            [getattr(e, metric) / scale for e in entries],
            [100 * e.accuracy for e in entries],
            s=12,
            c="0.8",
            label="evaluated (inherited weights)",
        )
        front = sorted(result.front, key=lambda i: getattr(entries[i], metric))
        ax.plot(
            [getattr(entries[i], metric) / scale for i in front],
            [100 * entries[i].accuracy for i in front],
            "o-",
            c="tab:red",
            alpha=0.3,
            ms=3,
            label="front, inherited weights",
        )
        if untrained:
            ax.scatter(
                [at(r) for r in untrained],
                [100 * r["inherited_accuracy"] for r in untrained],
                marker="o",
                s=30,
                facecolors="none",
                edgecolors="tab:red",
                alpha=0.6,
                label="front, untrained (not handed back)",
            )
        if trained:
            points = sorted((at(r), 100 * r["val_accuracy"]) for r in trained)
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                "^-",
                c="tab:green",
                ms=8,
                zorder=3,
                label="handed back, trained",
            )
        ax.set_xlabel(unit)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{archive.space.name}: {len(entries)} subnets evaluated")
    save_figure(fig, path)


def write_outputs(
    search: NATSearch,
    result: SearchResult,
    out_dir: str | Path,
    onnx: bool = True,
    exports_only: bool | None = None,
) -> None:
    """Write the handed-back models into ``front/NN/`` (config.json, weights.pt, and
    model.onnx unless ``onnx`` is False), then the run's result files. ``exports_only``:
    True writes the models only, False the result files only (a run times its exports
    before it reports them); None writes both."""
    out_dir = Path(out_dir)
    if exports_only is not False:
        _export(search, result, out_dir, onnx)
    if exports_only is True:
        return
    rows = pareto_rows(result)
    for row in rows:  # the int8 exports' own scores, as their config.json records them
        config = out_dir / row["folder"] / "config.json"
        int8 = json.loads(config.read_text()).get("int8") if row["folder"] else None
        if int8:
            row.update({f"int8_{k}": v for k, v in int8.items() if k not in ("file", "method")})
    _write_csv(out_dir / "pareto.csv", rows)
    _write_csv(out_dir / "history.csv", result.history)
    _plot(out_dir / "pareto.png", result, rows)
    text = report_text(result, search, rows)
    atomic_write(out_dir / "report.md", lambda f: f.write(text.encode()))


def _int8_inputs(data: DataSplits) -> tuple[torch.Tensor, dict[str, list]]:
    """The int8 export's calibration images (training ones) and the splits it is scored on,
    those the float model was."""
    calibration = sample_images(data.train_eval, INT8_CALIBRATION_IMAGES)
    return calibration, {s: SubnetEvaluator.batches(getattr(data, s)) for s in ("val", "test")}


def measure_export(model: nn.Module, arch: Arch, data: DataSplits, onnx: bool, int8: bool) -> float:
    """Seconds to export ``model`` as :func:`write_outputs` does (weights, ONNX when ``onnx``,
    the int8 file and its scores when ``int8`` too), timed now into a temporary folder: what
    a time-limited run keeps back for each model it hands back."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        images = sample_images(data.val) if onnx else None
        try:
            path = export_subnet(model, arch, Path(folder) / "model", {}, images)
        except OnnxMismatchError:  # found at the end of the export, so timed all the same:
            return time.perf_counter() - start  # the trained weights' export reports it
        if onnx and int8:
            quantize_subnet(path, arch.resolution, *_int8_inputs(data), {})
    return time.perf_counter() - start


def _export(search: NATSearch, result: SearchResult, out_dir: Path, onnx: bool) -> None:
    space, supernet = result.archive.space, search.supernet
    images = sample_images(search.data.val) if onnx else None
    int8 = onnx and search.config.precision == "int8"
    if int8:  # calibrated on training images; scored on the splits the float model was
        calibration, splits = _int8_inputs(search.data)
    for folder, m in handed_back(result):
        entry = result.archive.entries[m.index]
        path = export_subnet(
            m.model,
            m.arch,
            out_dir / folder,
            {
                "space": space.to_dict(),
                "num_classes": supernet.num_classes,
                "params": entry.params,
                "macs": entry.macs,
                "precision": result.archive.precision,
                "peak_memory_bytes": entry.peak_memory,
                "model_size_bytes": entry.model_size,
                **({"predicted_latency_ms": entry.latency} if entry.latency is not None else {}),
                "target": m.target,
                "source": entry.source,
                "trained": m.trained,
                "val_accuracy": m.val_accuracy,
                "test_accuracy": m.test_accuracy,
                "inherited_val_accuracy": m.inherited_val_accuracy,
                "inherited_test_accuracy": m.inherited_test_accuracy,
                "train_epochs": m.epochs,
                "train_seconds": m.seconds,
                "trained_val_accuracy": m.trained_val_accuracy,
                **({"race": m.race} if m.race else {}),
                "class_names": search.data.class_names,
                "input": INPUT_FORMAT,
            },
            images,
        )
        if int8:
            scores = {"val": m.val_accuracy, "test": m.test_accuracy}
            quantized = quantize_subnet(path, m.arch.resolution, calibration, splits, scores)
            config = json.loads((path / "config.json").read_text())
            write_json(path / "config.json", {**config, "int8": quantized})
