"""12. Multi-exit against the front: exits on seed 0's NAT run's most accurate front subnet,
trained with several seeds, thresholds fitted on validation for targets of expected MACs, and
test accuracy at each front subnet's MACs beside that subnet's own."""

from __future__ import annotations

import statistics

from nat.folder import open_run
from nat.io.checkpoint import load_subnet
from nat.io.files import mean_std
from nat.multiexit import judge_multi_exit, most_accurate, run_front
from nat.run import load_data

from .common import Bench, Result, Table, pct


def bench_multiexit(bench: Bench) -> Result:
    s = bench.s
    folder, _ = bench.nat_run(s.seeds[0])
    pairs = run_front(folder)
    front = [config for _, config in pairs]
    best = most_accurate(pairs)
    data = load_data(open_run(folder))
    docs = []
    for seed in s.multiexit_seeds:
        net, _ = load_subnet(best)
        docs.append(
            judge_multi_exit(
                net,
                data,
                bench.out / f"multiexit-{seed}",
                epochs=s.multiexit_epochs,
                points=s.multiexit_points,
                front=front,
                onnx=False,
                seed=seed,
                progress=False,
            )
        )
    first = docs[0]
    curve = []
    for i, point in enumerate(first["curve"]):
        accs = [d["curve"][i]["test"]["accuracy"] for d in docs]
        macs = [d["curve"][i]["test"]["expected_macs"] for d in docs]
        curve.append([f"{point['target_macs']:,.0f}", f"{statistics.fmean(macs):,.0f}", _pct(accs)])
    versus = []
    for i, f in enumerate(first["versus_front"]):
        accs = [d["versus_front"][i]["multi_exit_test_accuracy"] for d in docs]
        shown = "-" if None in accs else _pct(accs)
        versus.append(
            [f"{f['params']:,}", f"{f['macs']:,}", f"{100 * f['single_exit_test_accuracy']:.1f}",
             shown]
        )  # fmt: skip
    exits = ", ".join(str(k) for k in first["exit_stages"])
    sections = [
        Table(
            f"Multi-exit subnet (the front's most accurate, exits after stages {exits}; "
            f"{first['params']:,} params, {s.multiexit_epochs} epoch(s), seeds "
            f"{list(s.multiexit_seeds)}): test accuracy % at each target of expected MACs "
            "(thresholds fitted on validation)",
            ["target MACs", "test expected MACs", "test accuracy"],
            curve,
        ),
        Table(
            "At each front subnet's MACs: the single-exit subnet vs the multi-exit one",
            ["front params", "front MACs", "front test %", "multi-exit test %"],
            versus,
        ),
    ]
    return Result(
        data={"runs": docs},
        sections=sections,
        copies={"multiexit.png": bench.out / f"multiexit-{s.multiexit_seeds[0]}" / "multiexit.png"},
    )


def _pct(values: list[float]) -> str:
    return pct(*mean_std(values))
