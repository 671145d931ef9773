"""8. Class-incremental learning under a parameter budget (Feillet et al.'s question): at equal
budget, which architecture learns memoryless LUCIR best? The Feillet rule (shallowest depth,
then widest width) against width-only (full depth) and depth-only (full width), and the
AdvisIL setting for search: ``nat search`` on the first state's classes only, its front then
judged under the protocol from scratch, and its best subnet from the search's weights."""

from __future__ import annotations

import json
from pathlib import Path

import search_spaces
from nat.data import load_dataset
from nat.incremental.judge import Candidate, from_budgets, from_run, judge
from nat.incremental.protocol import CILConfig, Scenario
from nat.spec import RunSpec
from search_spaces import Arch

from .common import Bench, Result, Table


def _sources(bench: Bench) -> list[str]:
    """Digits always; the suite's own data too when it is not digits."""
    source = bench.pretrain_spec.data.source
    return ["digits"] if source == "digits" else ["digits", source]


def bench_cil(bench: Bench) -> Result:
    s = bench.s
    config = CILConfig(first_epochs=s.cil_first_epochs, later_epochs=s.cil_later_epochs)
    tables, data_out = [], {}
    for source in _sources(bench):
        digits = source == "digits"
        resolution = 8 if digits else 32  # digits are 8x8 images: more px only upsample
        subset = None if digits else s.cil_subset
        space_options = {} if digits else dict(s.cil_space_options)
        data = load_dataset(source, resolution, seed=0, subset=subset)
        scenario = Scenario(data.num_classes, s.cil_initial, s.cil_increment, s.cil_states)
        first = [data.class_names[c] for c in scenario.order[: scenario.initial]]
        name = "digits" if digits else Path(source).name.split(".")[0]
        space = search_spaces.get(s.cil_space, **space_options)
        candidates, missing = from_budgets(list(s.cil_budgets), space, resolution, data.num_classes)
        for budget in s.cil_budgets:
            label = f"{budget / 1e3:,.0f}k"
            spec = RunSpec.from_options(
                space=s.cil_space,
                space_options=space_options,
                data=source,
                subset=subset,
                resolutions=[resolution],
                classes=first,
                max_params=budget,
                seed=0,
                split_seed=0,  # the protocol's split: its test images stay unseen
                **s.cil_search_options,
            )
            folder, wall = bench.cached_run(f"cil-{name}-{label}", spec)
            print(f"cil {name} {label}: search on {first} took {wall:.0f} s", flush=True)
            front = [
                Candidate(f"searched {label} #{c.method.split()[-1]}", c.arch)
                for c in from_run(folder, inherit=False)
            ]
            best = max(
                sorted(folder.glob("front/*/config.json")),
                key=lambda p: json.loads(p.read_text())["val_accuracy"],
            )
            arch = Arch.from_dict(json.loads(best.read_text())["arch"])
            candidates += front
            candidates.append(
                Candidate(
                    f"searched {label} #{best.parent.name}, best by val, search's weights",
                    arch,
                    best.parent / "weights.pt",
                )
            )
        rows = judge(
            candidates, data, scenario, config, list(s.cil_seeds), bench.out / f"cil-{name}"
        )
        data_out[name] = {"rows": rows, "missing": missing, "state0_classes": first}
        tables.append(
            Table(
                f"{name}: memoryless LUCIR, {scenario.initial} + {scenario.increment} x "
                f"{scenario.states - 1} classes, test accuracy over the classes seen, mean ± "
                f"std over seeds {list(s.cil_seeds)}; searched on {', '.join(first)} only",
                ["method", "params", "MACs", "mean incremental %", "forgetting %", "final %"],
                [
                    [
                        r["method"],
                        f"{r['params']:,}",
                        f"{r['macs']:,}",
                        "{:.1f} ± {:.1f}".format(*(100 * v for v in r["mean_incremental"])),
                        "{:.1f} ± {:.1f}".format(*(100 * v for v in r["forgetting"])),
                        "{:.1f}".format(100 * r["per_state"][-1][0]),
                    ]
                    for r in rows
                ],
            )
        )
        if missing:
            tables.append("Not fitting: " + "; ".join(missing))
    return Result(
        data=data_out,
        sections=tables,
        copies={f"cil-{n}.png": bench.out / f"cil-{n}" / "cil.png" for n in data_out},
    )
