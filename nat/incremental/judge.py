"""``nat cil``: architectures judged by memoryless class-incremental learning.

The candidates come from a search run's front, from the Feillet rule and its width-only and
depth-only ablations at given budgets (the continuous rule on the family's reference network,
as Feillet et al. scaled it), or from any exported ``config.json``. Each learns the same
scenario over several seeds; the outputs are ``cil.json``, ``cil.md`` and ``cil.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from search_spaces import Arch, SearchSpace
from supernets import build_static

from ..data import DataSplits
from ..engine.heuristic import depth_only, feillet, reference_arch, width_only
from ..io.checkpoint import load_weights
from ..io.files import atomic_write, markdown_table, mean_std, save_figure, write_json
from ..profile import profile
from .protocol import CILConfig, Scenario, run_protocol

__all__ = ["Candidate", "from_budgets", "from_configs", "from_run", "judge", "run_data"]

RULES = {"feillet": feillet, "width-only": width_only, "depth-only": depth_only}


@dataclass(frozen=True)
class Candidate:
    """One architecture to judge; ``weights``: a ``weights.pt`` to start state 0 from
    (None: from scratch)."""

    method: str
    arch: Arch
    weights: Path | None = None


def from_budgets(
    budgets: list[float],
    space: SearchSpace,
    resolution: int,
    num_classes: int,
    rules: list[str] | None = None,
) -> tuple[list[Candidate], list[str]]:
    """The Feillet rule and its ablations (``rules``, names of ``RULES``; None: all) at each
    budget (params), on ``space``'s reference network (with its stem) at ``resolution`` px; and
    why a rule is missing where it cannot fit a budget (depth-only keeps the full width, often
    far above a small budget)."""
    unknown = sorted(set(rules or ()) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}: choose from {sorted(RULES)}")
    ref = reference_arch(space, resolution)
    out, missing = [], []
    for budget in budgets:
        for name, rule in RULES.items():
            if rules is not None and name not in rules:
                continue
            label = f"{name} {budget / 1e3:,.0f}k"
            try:
                out.append(Candidate(label, rule(budget, ref, num_classes).arch))
            except ValueError as err:
                missing.append(f"{label}: {err}")
    if budgets and not out:
        raise ValueError(f"no rule fits any budget: {'; '.join(missing)}")
    return out, missing


def from_configs(paths: list[Path], inherit: bool) -> list[Candidate]:
    """Architectures of exported ``config.json`` files (their ``weights.pt`` with
    ``inherit``)."""
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            config = json.loads(path.read_text())
            arch = Arch.from_dict(config["arch"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a subnet's config.json ({err})") from None
        weights = path.parent / "weights.pt"
        if inherit and not weights.is_file():
            raise ValueError(f"--inherit needs {weights}, which does not exist")
        out.append(Candidate(path.parent.name, arch, weights if inherit else None))
    return out


def from_run(run: Path, inherit: bool) -> list[Candidate]:
    """The front of a ``nat search`` run folder, in front order, named "searched NN"."""
    folders = sorted(Path(run).glob("front/*/config.json"))
    if not folders:
        raise ValueError(f"{run} has no front/*/config.json: give a finished `nat search` run")
    return [
        Candidate(f"searched {c.method}", c.arch, c.weights) for c in from_configs(folders, inherit)
    ]


def run_data(run: Path) -> tuple[DataSplits, tuple[str, ...]]:
    """A run's data with every class (its split, its seed), and the classes it searched on
    (empty: all)."""
    from ..folder import open_run
    from ..prepare import load_data
    from ..spec import RunSpec

    spec = open_run(run)
    classes = spec.data.classes
    return load_data(RunSpec.from_options(spec, classes=[])), classes


def judge(
    candidates: list[Candidate],
    data: DataSplits,
    scenario: Scenario,
    config: CILConfig,
    seeds: list[int],
    out: Path,
    progress: bool = True,
) -> list[dict]:
    """Run the protocol for every candidate and seed; write the outputs into ``out``."""
    if not candidates:
        raise ValueError("nothing to judge: give --run, --budgets or --config")
    rows = []
    for c in candidates:
        runs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = build_static(c.arch, data.num_classes)
            if c.weights is not None:
                _load_backbone(model, c.weights)
            runs.append(run_protocol(model, data, scenario, replace(config, seed=seed)))
        params, macs = profile(build_static(c.arch, data.num_classes), c.arch.resolution)
        row = {
            "method": c.method,
            "arch": c.arch.to_dict(),
            "params": params,
            "macs": macs,
            "inherited": c.weights is not None,
            "seeds": list(seeds),
            "runs": runs,
            "mean_incremental": mean_std([r["mean_incremental"] for r in runs]),
            "forgetting": mean_std([r["forgetting"] for r in runs]),
            "per_state": [
                mean_std([r["states"][s]["accuracy"] for r in runs]) for s in range(scenario.states)
            ],
        }
        rows.append(row)
        if progress:
            print(
                f"{c.method}: {params:,} params, mean incremental accuracy "
                "{:.2%} ± {:.2%}".format(*row["mean_incremental"]),
                flush=True,
            )
    _write(Path(out), rows, data, scenario, config)
    return rows


def _load_backbone(model: torch.nn.Module, weights: Path) -> None:
    """``weights`` into ``model``, all but the classifier (the task's classes differ)."""
    state = load_weights(weights)
    if not isinstance(state, dict):
        raise ValueError(f"{weights} holds no state_dict: export it again")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"{weights} does not fit its config's architecture: {err}") from None
    wrong = [k for k in missing if not k.startswith("classifier.")] + unexpected
    if wrong:
        raise ValueError(f"{weights} does not fit its config's architecture: {wrong[:3]}")


def _write(out: Path, rows: list[dict], data: DataSplits, scenario: Scenario, config) -> None:
    out.mkdir(parents=True, exist_ok=True)
    order = [data.class_names[c] for c in scenario.order]
    write_json(
        out / "cil.json",
        {
            "scenario": asdict(scenario) | {"order_names": order},
            "config": asdict(config),
            "rows": rows,
        },
    )
    headers = ["method", "params", "MACs", "mean incremental", "forgetting"] + [
        f"state {s} ({scenario.seen(s)} cl.)" for s in range(scenario.states)
    ]
    table = [
        [
            r["method"] + (" (inherited)" if r["inherited"] else ""),
            f"{r['params']:,}",
            f"{r['macs']:,}",
            "{:.2%} ± {:.2%}".format(*r["mean_incremental"]),
            "{:.2%} ± {:.2%}".format(*r["forgetting"]),
        ]
        + [f"{m:.1%}" for m, _ in r["per_state"]]
        for r in rows
    ]
    text = (
        f"# Memoryless class-incremental learning (LUCIR without exemplars)\n\n"
        f"Scenario: {scenario.initial} classes, then {scenario.increment} per state, "
        f"{scenario.states} states; class order {', '.join(order)}. Test accuracy over the "
        f"classes seen so far; mean incremental: over every state but the first; mean ± std "
        f"over seeds {rows[0]['seeds']}. Epochs per state: {config.first_epochs} first, "
        f"{config.later_epochs} later; λ_base {config.lambda_base}.\n\n"
        + markdown_table(headers, table)
    )
    atomic_write(out / "cil.md", lambda f: f.write(text.encode()))

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    seen = [scenario.seen(s) for s in range(scenario.states)]
    colors = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    for i, r in enumerate(rows):
        mean = np.array([m for m, _ in r["per_state"]]) * 100
        err = np.array([s for _, s in r["per_state"]]) * 100
        ax.errorbar(
            seen, mean, yerr=err, marker="o", capsize=3, label=r["method"], color=colors(i % 20)
        )
    ax.set_xlabel("classes seen")
    ax.set_ylabel("test accuracy over the classes seen (%)")
    ax.set_xticks(seen)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "cil.png")
