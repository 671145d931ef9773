"""``nat compare``: the Feillet heuristic and its one-dimensional ablations against the
searched subnets, at several budgets, on the test split.

For each budget: the heuristic (shallowest depth, widest width within budget), width-only
(full depth), depth-only (full width), all snapped to the supernet's choices so they inherit
its weights, and the searched subnet (the archive's most accurate one within budget). Each
is scored on the test split with inherited weights (BatchNorm recalibrated) and after the
same short fine-tuning, over several seeds (BatchNorm batches and fine-tuning order). With
``scratch``, the heuristic's architecture is also trained from random initial weights for
the same number of epochs: the reference that shows what the inherited weights are worth.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from search_spaces import Arch
from supernets import build_static

from .archive import Archive
from .checkpoint import load_supernet
from .data import load_from_settings, make_loader
from .evaluate import SubnetEvaluator
from .files import atomic_write, save_figure, write_json
from .heuristic import depth_only, feillet, width_only
from .train import evaluate, finetune

SCRATCH = "heuristic (scratch)"

__all__ = ["compare"]

METHODS = {"heuristic": feillet, "width-only": width_only, "depth-only": depth_only}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _candidates(
    archive: Archive, budget: float, metric: str, methods: tuple[str, ...]
) -> dict[str, Arch | None]:
    space, num_classes = archive.space, archive.num_classes
    archs: dict[str, Arch | None] = {}
    for name, method in METHODS.items():
        if name not in methods:
            continue
        try:
            archs[name] = method(budget, None, num_classes, metric=metric, space=space).arch
        except ValueError:
            archs[name] = None  # nothing of this method fits: reported as such
    within = [e for e in archive.entries if getattr(e, metric) <= budget]
    best = max(within, key=lambda e: e.accuracy, default=None)
    if "searched" in methods:
        archs["searched"] = space.decode(best.x) if best else None
    return archs


def compare(
    run_dir: str | Path,
    budgets: list[float],
    seeds: tuple[int, ...] = (0, 1, 2),
    finetune_epochs: int = 1,
    metric: str = "params",
    lr: float = 0.01,
    bn_batches: int = 20,
    progress: bool = True,
    scratch: bool = False,
    methods: tuple[str, ...] = (*METHODS, "searched"),
) -> list[dict]:
    """Compare ``methods`` (of "heuristic", "width-only", "depth-only", "searched") at each
    budget, plus the heuristic trained from scratch with ``scratch``; writes compare.md,
    compare.json and compare.png into ``run_dir`` (a ``nat search`` folder) and returns the
    table rows (accuracies as (mean, std) over seeds, 0..1)."""
    unknown = set(methods) - {*METHODS, "searched"}
    if unknown or not methods:
        raise ValueError(f"unknown methods {sorted(unknown)}: choose from {[*METHODS, 'searched']}")
    run_dir = Path(run_dir)
    if not (run_dir / "archive.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no archive.json: give a `nat search` run folder")
    archive = Archive.load(run_dir / "archive.json")
    doc = json.loads((run_dir / "archive.json").read_text())
    settings = doc.get("data")
    if not settings:
        raise ValueError(f"{run_dir / 'archive.json'} does not name its data; rerun the search")
    data = load_from_settings(settings)
    test_batches = list(make_loader(data.test, 256, shuffle=False))
    rows = []
    for budget in budgets:
        candidates = _candidates(archive, budget, metric, tuple(methods))
        if scratch:
            candidates[SCRATCH] = _candidates(archive, budget, metric, ("heuristic",))["heuristic"]
        for method, arch in candidates.items():
            row = {"budget": budget, "method": method}
            if arch is None:
                rows.append({**row, "params": None, "macs": None})
                continue
            params, macs = archive.space.complexity(arch, archive.num_classes)
            inherited, tuned = [], []
            for seed in seeds:
                if method == SCRATCH:
                    torch.manual_seed(seed)
                    model = build_static(arch, archive.num_classes)
                else:
                    supernet, _ = load_supernet(run_dir / "supernet.pt")
                    evaluator = SubnetEvaluator(data, bn_batches, seed=seed)
                    evaluator.val_batches = test_batches  # score on the held-out test split
                    inherited.append(float(evaluator(supernet, [arch])[0]))
                    model = supernet.extract(arch)
                finetune(
                    model,
                    data,
                    arch.resolution,
                    finetune_epochs,
                    lr=lr,
                    seed=seed,
                    progress=progress,
                )
                tuned.append(evaluate(model, test_batches, arch.resolution))
            rows.append(
                {
                    **row,
                    "params": params,
                    "macs": macs,
                    "inherited": _mean_std(inherited) if inherited else None,
                    "finetuned": _mean_std(tuned),
                    "resolution": arch.resolution,
                    "depths": list(arch.depths),
                    "arch": arch.to_dict(),
                }
            )
    _write(run_dir, rows, metric, seeds, finetune_epochs)
    return rows


def _write(run_dir: Path, rows: list[dict], metric: str, seeds, epochs: int) -> None:
    write_json(run_dir / "compare.json", rows)
    lines = [
        f"# Heuristic vs searched ({metric} budgets; test accuracy, mean ± std over seeds "
        f"{list(seeds)}; fine-tuning: {epochs} epoch(s))",
        "",
        "| budget | method | params | MACs | inherited | fine-tuned (scratch: trained) | depths |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["params"] is None:
            lines.append(f"| {r['budget']:,.0f} | {r['method']} | nothing fits | | | | |")
            continue
        fm, fsd = r["finetuned"]
        inherited = "{:.2%} ± {:.2%}".format(*r["inherited"]) if r["inherited"] else "-"
        lines.append(
            f"| {r['budget']:,.0f} | {r['method']} | {r['params']:,} | {r['macs']:,} | "
            f"{inherited} | {fm:.2%} ± {fsd:.2%} | {r['depths']} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(run_dir / "compare.md", lambda f: f.write(text.encode()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, marker in zip(
        ("heuristic", "width-only", "depth-only", "searched", SCRATCH), "s^vox", strict=True
    ):
        pts = sorted(
            (r[metric], r["finetuned"])
            for r in rows
            if r["method"] == method and r["params"] is not None
        )
        if pts:
            x = np.array([p[0] for p in pts]) / 1e6
            y = np.array([100 * p[1][0] for p in pts])
            err = np.array([100 * p[1][1] for p in pts])
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=method)
    ax.set_xlabel(f"{metric} (M)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, run_dir / "compare.png")
