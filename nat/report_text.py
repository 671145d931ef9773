"""The text of a run's ``report.md``: settings, the time plan against the actual stage times,
the handed-back models, the race that chose the one at the full budget, the front, the
heuristic against the search, and the iterations."""

from __future__ import annotations

from .engine.loop import NATSearch, SearchResult
from .quantize import INT8_METHOD

__all__ = ["report_text", "time_lines"]

# Stage names in run order, as the run's clock records them, and what the plan calls them.
_STAGES = (
    ("data", "data loading and checks"),
    ("measure", "measuring step times"),
    ("pretrain", "supernet pre-training"),
    ("search", "search (design of experiments, iterations)"),
    ("final", "race and final training"),
    ("export", "exports and scoring"),
    ("other", "report and the rest"),
)


def time_lines(timing: dict | None, transferred: bool = False) -> list[str]:
    """The run's time as a markdown table: each stage's planned and actual seconds."""
    if not timing:
        return []
    plan, actual = timing.get("plan"), timing["actual"]
    planned = {}
    if plan:
        planned = {
            "data": None,
            "measure": plan["spent"],  # data and measuring, before the plan was made
            "pretrain": plan["pretrain"],
            "search": plan["search"],
            "final": plan["final"],
            "export": plan["reserve"],
        }
    limit = timing.get("limit")
    head = (
        f"Limit {limit:,.0f} s; wall time {timing['wall']:,.0f} s "
        f"({timing['wall'] / limit:.1%} of the limit)."
        if limit
        else f"No time limit; wall time {timing['wall']:,.0f} s."
    )
    lines = [
        "",
        "## Time",
        "",
        head
        + " Planned seconds come from step times measured at the start"
        + (
            f" (a pre-training epoch {plan['times']['pretrain_epoch']:.1f} s, an evaluation "
            f"{plan['times']['evaluation']:.2f} s{_final_epoch(plan)}); the plan's first row "
            "covers data loading and measuring together."
            if plan
            else "; this run had no plan."
        ),
        *_strategy_lines(plan, transferred),
        "",
        "| stage | planned s | actual s |",
        "|---|---|---|",
    ]
    for key, name in _STAGES:
        if key not in actual and key not in planned:
            continue
        want = planned.get(key)
        lines.append(
            f"| {name} | {'-' if want is None else f'{want:,.0f}'} | {actual.get(key, 0):,.1f} |"
        )
    total = f"{limit:,.0f}" if limit else "-"
    lines.append(f"| **total** | {total} | {sum(actual.values()):,.1f} |")
    return lines


def _final_epoch(plan: dict) -> str:
    seconds = plan["times"].get("final_epoch")
    return "" if seconds is None else f", a final-training epoch at the budget {seconds:.1f} s"


def _strategy_lines(plan: dict | None, transferred: bool) -> list[str]:
    """What the plan spent the time on, and why (a plan has a strategy since 2026-12).
    ``transferred``: the supernet came from a source checkpoint."""
    if not plan or plan.get("strategy", "search") == "search":
        return []
    how, scored = (
        ("fine-tuned from the source supernet's weights", "with the source's weights")
        if transferred
        else ("trained from scratch", "with untrained weights")
    )
    return [
        "",
        f"**No search**: the Feillet heuristic's subnets were {how} for the whole final "
        f"training, because {plan['reason']}. The archive holds the seeds scored {scored}; "
        "a longer --time-limit (or --strategy search) searches.",
    ]


def _race_lines(result: SearchResult) -> list[str]:
    entries = result.archive.entries
    raced = [m for m in result.models if m.race]
    if not raced:
        return []
    top = raced[-1]
    lines = [
        "",
        "## The race for the model at the full budget",
        "",
        "Successive halving at equal training time: every candidate trains the same share of "
        "the same schedule, so one that trains faster gets more epochs for it; the better half "
        "on validation goes on, until one is left and trains to the end. Scores closer to a "
        "rung's best than sampling noise (a 95 % two-proportion test on the validation "
        "images) are a tie, which the candidate with more epochs wins.",
        "",
        "| rung (share of the schedule) | candidate | params | MACs | epochs | seconds | "
        "s / epoch | validation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rung in top.race:
        for c in rung["candidates"]:
            e = entries[c["entry"]] if "entry" in c else None
            name = c["name"]
            lines.append(
                f"| {rung['fraction']:.3f} | {name} | "
                + (f"{e.params:,} | {e.macs:,} | " if e else "- | - | ")
                + f"{c['epochs']:.2f} | {c['seconds']:.0f} | "
                + f"{c['seconds_per_epoch'] or 0:.1f} | {c['score']:.2%} |"
            )
    winner = entries[top.index]
    lines += [
        "",
        f"Survivor: {winner.source} subnet, {winner.params:,} params, {winner.macs:,} MACs "
        f"(inherited {top.inherited_val_accuracy:.2%}); trained in {top.seconds:.0f} s to "
        f"{top.trained_val_accuracy or 0:.2%} validation"
        + ("." if top.trained else " (not kept: the inherited weights scored higher)."),
    ]
    return lines


def _limit(metric: str, value: float, precision: str) -> str:
    if metric == "latency":
        return f"latency ≤ {value:.3g} ms"
    if metric in ("peak_memory", "model_size"):
        return f"{metric} ≤ {value:,.0f} bytes at {precision}"
    return f"{metric} ≤ {value:,.0f}"


def _int8_lines(handed: list[dict]) -> list[str]:
    """The int8 exports beside their float models (``--precision int8``)."""
    quantized = [r for r in handed if "int8_test_accuracy" in r]
    if not quantized:
        return []
    lines = [
        "",
        "## int8 models (`model.int8.onnx`; " + INT8_METHOD + ")",
        "",
        "| folder | float test | int8 val | int8 test | test drop (points) | int8 bytes | "
        "peak int8 activations (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in quantized:
        lines.append(
            f"| {r['folder']} | {r['test_accuracy']:.2%} | {r['int8_val_accuracy']:.2%} | "
            f"{r['int8_test_accuracy']:.2%} | {r['int8_test_drop_points']:.2f} | "
            f"{r['int8_model_size_bytes']:,} | {r['int8_peak_memory_bytes']:,} |"
        )
    return lines


def report_text(result: SearchResult, search: NATSearch, rows: list[dict]) -> str:
    """report.md of ``result``, with ``rows`` from :func:`nat.report.pareto_rows`."""
    cfg, archive = search.config, result.archive
    names = search.data.class_names
    budgets = (
        ", ".join(_limit(m, v, cfg.precision) for m, v in search.budgets.limits.items() if v)
        or "none"
    )
    latency = archive.latency is not None
    iterations = len(result.history) - 1
    plan = (result.timing or {}).get("plan") or {}
    transferred = "source_supernet" in search.metadata
    # No supernet trained: a heuristic plan's models start from fresh weights, or a source's.
    scratch = plan.get("strategy") == "heuristic" and not transferred
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
        *_source_lines(search.metadata.get("source_supernet")),
        f"- Iterations: {iterations}; real evaluations: {len(archive)} "
        f"(archive), candidates per iteration: {cfg.candidates}; surrogate: {cfg.surrogate}; "
        f"seed {cfg.seed}",
        f"- Final hypervolume: {result.hypervolume:.4f} (normalised objectives, reference "
        "point 1.01)",
        *time_lines(result.timing, transferred),
        "",
        "## Handed-back models (trained from "
        + ("fresh weights" if scratch else "their inherited weights")
        + "; validation chose, the test split only scores)",
        "",
        "| folder | target | params | MACs | "
        + ("latency ms | " if latency else "")
        + "inherited val | trained val | epochs | train s | test | resolution | depths | "
        "source |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if latency else ""),
    ]
    handed = [r for r in rows if r["folder"]]
    for r in handed:
        trained = r["trained_val_accuracy"]
        tuned = "-" if trained in ("", None) else f"{trained:.2%}"
        if trained not in ("", None) and not r["trained"]:
            tuned += " (not kept: inherited exported)"
        lines.append(
            f"| {r['folder']} | {r['target']:,.0f} | {r['params']:,} | {r['macs']:,} | "
            + (f"{r['latency_ms']:.3f} | " if latency else "")
            + f"{r['inherited_accuracy']:.2%} | {tuned} | {r['epochs']:.1f} | "
            f"{r['train_seconds']:.0f} | {r['test_accuracy']:.2%} | {r['resolution']} | "
            f"{r['depths']} | {r['source']} |"
        )
    if handed:
        best = max(handed, key=lambda r: r["val_accuracy"])
        lines += [
            "",
            f"Best on validation: `{best['folder']}` ({best['val_accuracy']:.2%} validation, "
            f"{best['test_accuracy']:.2%} test, {best['params']:,} params).",
        ]
    lines += _race_lines(result)
    lines += _int8_lines(handed)
    rest = [r for r in rows if not r["folder"]]
    if rest:
        lines += [
            "",
            "## The rest of the front: untrained (inherited weights, not exported; "
            "`nat sample --checkpoint supernet.pt --config ...` extracts one)",
            "",
            "| inherited val | params | MACs | resolution | depths | source |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['inherited_accuracy']:.2%} | {r['params']:,} | {r['macs']:,} | "
            f"{r['resolution']} | {r['depths']} | {r['source']} |"
            for r in rest
        ]
    if latency:
        table = archive.latency
        lines += [
            "",
            f"Latency: predicted from {len(table.rows)} units measured with "
            f"{table.machine['runtime']}, {table.machine['threads']} thread(s), batch 1, on "
            f"{table.machine['cpu']}.",
        ]
    if not scratch:  # with untrained weights, the comparison says nothing
        lines += _heuristic_lines(result)
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


def _source_lines(source: dict | None) -> list[str]:
    """Where the supernet came from, when the run started from a checkpoint (transfer)."""
    if not source:
        return []
    trained = [f"on {source['data']}" if source.get("data") else None]
    if source.get("class_names"):
        trained.append(f"{len(source['class_names'])} classes")
    if source.get("epochs") is not None:
        trained.append(f"{source['epochs']} epochs")
    if source.get("budgets"):
        trained.append("budgets " + ", ".join(f"{b:,.0f}" for b in source["budgets"]))
    detail = ", ".join([source["space"], *(t for t in trained if t)])
    return [f"- Source supernet: `{source['path']}` ({detail})"]


def _heuristic_lines(result: SearchResult) -> list[str]:
    entries = result.archive.entries
    heur = [e for e in entries if e.source == "heuristic"]
    if not heur:
        return []
    lines = [
        "",
        "## Heuristic vs searched, inherited weights (best evaluated subnet within the "
        "heuristic's parameters)",
        "",
        "| heuristic params | heuristic accuracy | best searched accuracy | its params |",
        "|---|---|---|---|",
    ]
    for h in heur:
        within = [e for e in entries if e.params <= h.params and e.source != "heuristic"]
        best = max(within, key=lambda e: e.accuracy, default=None)
        lines.append(
            f"| {h.params:,} | {h.accuracy:.2%} | "
            + (f"{best.accuracy:.2%} | {best.params:,} |" if best else "- | - |")
        )
    return lines
