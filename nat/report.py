"""What a search run leaves in its folder: pareto.csv, pareto.png, history.csv, the front's
subnets and report.md (archive.json and supernet.pt are written during the run)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from matplotlib.figure import Figure

from .engine.loop import NATSearch, SearchResult
from .io.checkpoint import export_subnet
from .io.deploy import INPUT_FORMAT, sample_images
from .io.files import atomic_write, save_figure

__all__ = ["handed_back", "write_outputs"]


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
    """(folder, nat.handback.FrontModel) of every model the run hands back: the front's in
    front order, in ``front/NN``, then the heuristic's when it is off the front, in
    ``heuristic``."""
    out = [(f"front/{rank:02d}", m) for rank, m in enumerate(result.models)]
    return out + ([("heuristic", result.heuristic)] if result.heuristic is not None else [])


def _front_rows(result: SearchResult) -> list[dict]:
    space = result.archive.space
    rows = []
    for folder, m in handed_back(result):
        e = result.archive.entries[m.index]
        arch = space.decode(e.x)
        on_front = folder.startswith("front/")
        rows.append(
            {
                "rank": int(folder[6:]) if on_front else "",
                "on_front": on_front,
                "accuracy": e.accuracy,
                "finetuned_accuracy": m.finetuned_val_accuracy,
                "val_accuracy": m.val_accuracy,  # the exported weights'
                "inherited_test_accuracy": m.inherited_test_accuracy,
                "test_accuracy": m.test_accuracy,
                "finetune_epochs": m.finetune_epochs,
                "params": e.params,
                "macs": e.macs,
                "latency_ms": e.latency,
                "resolution": arch.resolution,
                "depths": " ".join(map(str, arch.depths)),
                "source": e.source,
                "iteration": e.iteration,
                "folder": folder,
                "x": " ".join(map(str, e.x)),
            }
        )
    return rows


def _plot(path: Path, result: SearchResult) -> None:
    archive = result.archive
    entries = archive.entries
    panels = [("macs", "MACs (M)", 1e6), ("params", "parameters (M)", 1e6)]
    if archive.latency is not None:
        panels.append(("latency", "predicted latency (ms, batch 1)", 1.0))
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels))
    # (archive entry, accuracy in 0..1) of the fine-tuned subnets and the heuristic's seeds
    tuned = [
        (entries[m.index], m.val_accuracy) for _, m in handed_back(result) if m.finetune_epochs
    ]
    seeds = [(e, e.accuracy) for e in entries if e.source == "heuristic"]
    for ax, (metric, unit, scale) in zip(axes, panels, strict=True):
        x = [getattr(e, metric) / scale for e in entries]
        ax.scatter(x, [100 * e.accuracy for e in entries], s=14, c="0.7", label="evaluated")
        front = sorted(result.front, key=lambda i: getattr(entries[i], metric))
        ax.plot(
            [getattr(entries[i], metric) / scale for i in front],
            [100 * entries[i].accuracy for i in front],
            "o-",
            c="tab:red",
            ms=4,
            label="non-dominated",
        )
        marks = {
            "fine-tuned": (tuned, "^", 50, "tab:green"),
            "Feillet heuristic": (seeds, "*", 120, "tab:blue"),
        }
        for label, (points, marker, size, color) in marks.items():
            if points:
                ax.scatter(
                    [getattr(e, metric) / scale for e, _ in points],
                    [100 * acc for _, acc in points],
                    marker=marker,
                    s=size,
                    c=color,
                    label=label,
                    zorder=3,
                )
        ax.set_xlabel(unit)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{archive.space.name}: {len(entries)} subnets evaluated")
    save_figure(fig, path)


def _finetuned_cell(accuracy: float | None, epochs: int) -> str:
    """Fine-tuned validation accuracy for the report: "-" when not fine-tuned, and a mark
    when fine-tuning did not beat the inherited weights, which are then exported."""
    if accuracy is None:
        return "-"
    return f"{accuracy:.2%} ({epochs} ep)" if epochs else f"{accuracy:.2%} (not kept)"


def _report(result: SearchResult, search: NATSearch, front_rows: list[dict]) -> str:
    cfg, archive = search.config, result.archive
    names = search.data.class_names
    budgets = (
        ", ".join(
            f"{m} ≤ {v:.3g} ms" if m == "latency" else f"{m} ≤ {v:,.0f}"
            for m, v in search.budgets.limits.items()
            if v
        )
        or "none"
    )
    latency = archive.latency is not None
    lines = [
        f"# Search report: {archive.space.name}",
        "",
        f"- Space: `{archive.space!r}`",
        f"- Budgets: {budgets}; objectives: error, {', '.join(cfg.metrics)}",
        f"- Classes: {len(names)} ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''})",
        *(
            [
                "- Width choices fitted to the budget: "
                f"{search.metadata['width_mults_from_budget']} (the Feillet width of the budget "
                "times 0.5, 0.71 and 1; `--width-mults` overrides)"
            ]
            if "width_mults_from_budget" in search.metadata
            else []
        ),
        f"- Iterations: {cfg.iterations}; real evaluations: {len(archive)} "
        f"(archive), candidates per iteration: {cfg.candidates}; adaptation epochs per "
        f"iteration: {cfg.adapt_epochs}; surrogate: {cfg.surrogate}; seed {cfg.seed}",
        f"- Final hypervolume: {result.hypervolume:.4f} (normalised objectives, reference "
        "point 1.01)",
        "",
        "## Front (validation accuracy with inherited weights, BatchNorm recalibrated, and "
        "after fine-tuning; test: the exported weights on the test split, which no choice saw; "
        "the last row without a rank is the Feillet heuristic's subnet, fine-tuned the same "
        "way, when it is off the front)",
        "",
        "| rank | inherited | fine-tuned | test (exported weights) | params | MACs | "
        + ("latency ms | " if latency else "")
        + "resolution | depths | source | folder |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if latency else ""),
    ]
    lines += [
        f"| {r['rank']} | {r['accuracy']:.2%} | "
        + (_finetuned_cell(r["finetuned_accuracy"], r["finetune_epochs"]))
        + f" | {r['test_accuracy']:.2%} | {r['params']:,} | {r['macs']:,} | "
        + (f"{r['latency_ms']:.3f} | " if latency else "")
        + f"{r['resolution']} | {r['depths']} | {r['source']} | {r['folder']} |"
        for r in front_rows
    ]
    best = max(front_rows, key=lambda r: r["val_accuracy"])
    lines += [
        "",
        f"Best on validation: `{best['folder']}` ({best['val_accuracy']:.2%} validation, "
        f"{best['test_accuracy']:.2%} test, {best['params']:,} params).",
    ]
    if latency:
        table = archive.latency
        lines += [
            "",
            f"Latency: predicted from {len(table.rows)} units measured with "
            f"{table.machine['runtime']}, {table.machine['threads']} thread(s), batch 1, on "
            f"{table.machine['cpu']}.",
        ]
    heur = [e for e in archive.entries if e.source == "heuristic"]
    if heur:
        lines += [
            "",
            "## Heuristic vs searched (best evaluated subnet within the heuristic's parameters)",
            "",
            "| heuristic params | heuristic accuracy | best searched accuracy | its params |",
            "|---|---|---|---|",
        ]
        for h in heur:
            within = [
                e for e in archive.entries if e.params <= h.params and e.source != "heuristic"
            ]
            best = max(within, key=lambda e: e.accuracy, default=None)
            lines.append(
                f"| {h.params:,} | {h.accuracy:.2%} | "
                + (f"{best.accuracy:.2%} | {best.params:,} |" if best else "- | - |")
            )
    lines += [
        "",
        "## Iterations",
        "",
        "| iteration | HV | best accuracy | archive | surrogate | tau (new) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.history:
        tau = r.get("new_kendall_tau")
        lines.append(
            f"| {r['iteration']} | {r['hv']:.4f} | {r['best_accuracy']:.2%} | "
            f"{r['archive_size']} | {r.get('surrogate', '-')} | "
            f"{'-' if tau is None else f'{tau:.2f}'} | {r.get('seconds', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(
    search: NATSearch, result: SearchResult, out_dir: str | Path, onnx: bool = True
) -> None:
    """Write the run's result files and export the handed-back front (``result.models``)
    into ``front/NN/``, and the heuristic's into ``heuristic/`` when it is off the front
    (config.json, weights.pt, and model.onnx unless ``--no-onnx``)."""
    out_dir = Path(out_dir)
    rows = _front_rows(result)
    _write_csv(out_dir / "pareto.csv", rows)
    _write_csv(out_dir / "history.csv", result.history)
    _plot(out_dir / "pareto.png", result)
    space, supernet = result.archive.space, search.supernet
    images = sample_images(search.data.val) if onnx else None
    for row, (_, m) in zip(rows, handed_back(result), strict=True):
        entry = result.archive.entries[m.index]
        export_subnet(
            m.model,
            m.arch,
            out_dir / row["folder"],
            {
                "space": space.to_dict(),
                "num_classes": supernet.num_classes,
                "params": entry.params,
                "macs": entry.macs,
                **({"predicted_latency_ms": entry.latency} if entry.latency is not None else {}),
                "val_accuracy": m.val_accuracy,
                "test_accuracy": m.test_accuracy,
                "inherited_val_accuracy": m.inherited_val_accuracy,
                "inherited_test_accuracy": m.inherited_test_accuracy,
                "finetune_epochs": m.finetune_epochs,
                "finetuned_val_accuracy": m.finetuned_val_accuracy,
                "class_names": search.data.class_names,
                "input": INPUT_FORMAT,
            },
            images,
        )
    text = _report(result, search, rows)
    atomic_write(out_dir / "report.md", lambda f: f.write(text.encode()))
