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

from pathlib import Path

import numpy as np
import torch

from search_spaces import Arch
from supernets import build_static

from .engine.archive import Archive
from .engine.heuristic import depth_only, feillet, width_only
from .folder import open_run
from .io.checkpoint import load_supernet
from .io.files import atomic_write, markdown_table, mean_std, save_figure, write_json
from .prepare import load_data
from .profile import profile
from .pruning import PruningError, prune_to_budget
from .recipes import COMPARE
from .training.evaluate import SubnetEvaluator
from .training.train import evaluate, finetune

SCRATCH = "heuristic (scratch)"

__all__ = ["compare"]

METHODS = {"heuristic": feillet, "width-only": width_only, "depth-only": depth_only}
# The space's largest subnet, inherited, pruned to the budget while fine-tuning (nat.pruning).
PRUNED = {"pruned-l1": "l1", "pruned-taylor": "taylor"}
KNOWN = (*METHODS, "searched", *PRUNED)


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
    for name in PRUNED:
        if name in methods:
            archs[name] = space.largest()  # the starting point; pruning sets the size
    return archs


def compare(
    run_dir: str | Path,
    budgets: list[float],
    seeds: tuple[int, ...] = COMPARE.seeds,
    finetune_epochs: int = COMPARE.finetune_epochs,
    metric: str = COMPARE.metric,
    lr: float = COMPARE.lr,
    bn_batches: int = COMPARE.bn_batches,
    progress: bool = True,
    scratch: bool = False,
    methods: tuple[str, ...] = COMPARE.methods,
) -> list[dict]:
    """Compare ``methods`` (of :data:`KNOWN`) at each budget, plus the heuristic trained
    from scratch with ``scratch``; writes compare.md, compare.json and compare.png into
    ``run_dir`` (a ``nat search`` folder) and returns the table rows (accuracies as (mean,
    std) over seeds, 0..1). The pruned methods prune the space's largest subnet, inherited,
    to the params budget during the same fine-tuning epochs the others get."""
    unknown = set(methods) - set(KNOWN)
    if unknown or not methods:
        raise ValueError(f"unknown methods {sorted(unknown)}: choose from {list(KNOWN)}")
    if finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be at least 0, got {finetune_epochs}")
    pruned = [m for m in methods if m in PRUNED]
    if pruned and metric != "params":
        raise ValueError(f"{pruned[0]} prunes to a params budget: use --metric params")
    if pruned and finetune_epochs == 0:
        raise ValueError(f"{pruned[0]} prunes while fine-tuning: give --finetune-epochs 1 or more")
    if scratch and finetune_epochs == 0:
        raise ValueError("--scratch trains for --finetune-epochs: give at least 1")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    run_dir = Path(run_dir)
    spec = open_run(run_dir)  # before anything slow: a clear error for a wrong folder
    if not (run_dir / "archive.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no archive.json: the search did not start")
    archive = Archive.load(run_dir / "archive.json")
    plan = {budget: _candidates(archive, budget, metric, tuple(methods)) for budget in budgets}
    if not any(arch for archs in plan.values() for arch in archs.values()):
        raise ValueError(
            f"nothing fits any of the budgets {[f'{b:,.0f}' for b in budgets]} {metric}: raise them"
        )
    data = load_data(spec)
    supernet, _ = load_supernet(run_dir / "supernet.pt")
    test_batches = SubnetEvaluator.batches(data.test)
    rows = []
    for budget, candidates in plan.items():
        if scratch:
            candidates[SCRATCH] = _candidates(archive, budget, metric, ("heuristic",))["heuristic"]
        for method, arch in candidates.items():
            row = {"budget": budget, "method": method}
            if arch is None:
                rows.append({**row, "params": None, "macs": None})
                continue
            params, macs = archive.space.complexity(arch, archive.num_classes)
            inherited, tuned, unprunable = [], [], None
            for seed in seeds:
                if method in PRUNED:
                    _, model = SubnetEvaluator(data, bn_batches, seed=seed).evaluate_one(
                        supernet, arch
                    )
                    try:
                        prune_to_budget(
                            model, data, arch.resolution, budget, PRUNED[method],
                            finetune_epochs, lr, seed, progress,
                        )  # fmt: skip
                    except PruningError as err:
                        unprunable = str(err)  # this budget only: the others still run
                        break
                    params, macs = profile(model, arch.resolution)
                    tuned.append(evaluate(model, test_batches, arch.resolution))
                    continue
                if method == SCRATCH:
                    torch.manual_seed(seed)
                    model = build_static(arch, archive.num_classes)
                else:  # inherited weights, BatchNorm recalibrated, scored on the test split
                    evaluator = SubnetEvaluator(data, bn_batches, seed=seed)
                    _, model = evaluator.evaluate_one(supernet, arch)
                    inherited.append(evaluate(model, test_batches, arch.resolution))
                if finetune_epochs:
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
            if unprunable:
                rows.append({**row, "params": None, "macs": None, "why": unprunable})
                continue
            rows.append(
                {
                    **row,
                    "params": params,
                    "macs": macs,
                    "inherited": mean_std(inherited) if inherited else None,
                    "finetuned": mean_std(tuned),
                    "resolution": arch.resolution,
                    "depths": "pruned" if method in PRUNED else list(arch.depths),
                    "arch": None if method in PRUNED else arch.to_dict(),
                    **({"pruned_from": arch.to_dict()} if method in PRUNED else {}),
                }
            )
    _write(run_dir, rows, metric, seeds, finetune_epochs)
    return rows


def _write(run_dir: Path, rows: list[dict], metric: str, seeds, epochs: int) -> None:
    write_json(run_dir / "compare.json", rows)
    table = []
    for r in rows:
        if r["params"] is None:
            why = "cannot prune" if r.get("why") else "nothing fits"
            table.append([f"{r['budget']:,.0f}", r["method"], why, "", "", "", ""])
            continue
        inherited = "{:.2%} ± {:.2%}".format(*r["inherited"]) if r["inherited"] else "-"
        tuned = "{:.2%} ± {:.2%}".format(*r["finetuned"])
        table.append(
            [
                f"{r['budget']:,.0f}",
                r["method"],
                f"{r['params']:,}",
                f"{r['macs']:,}",
                inherited,
                tuned,
                r["depths"],
            ]
        )
    headers = [
        "budget",
        "method",
        "params",
        "MACs",
        "inherited",
        "fine-tuned (scratch: trained)",
        "depths",
    ]
    text = (
        f"# Heuristic vs searched ({metric} budgets; test accuracy, mean ± std over seeds "
        f"{list(seeds)}; fine-tuning: {epochs} epoch(s))\n\n" + markdown_table(headers, table)
    )

    atomic_write(run_dir / "compare.md", lambda f: f.write(text.encode()))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for method, marker in zip(
        ("heuristic", "width-only", "depth-only", "searched", SCRATCH, *PRUNED),
        "s^vox<>",
        strict=True,
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
