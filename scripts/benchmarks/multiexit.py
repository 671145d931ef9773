"""12. Multi-exit against the front: exits on seed 0's NAT run's most accurate front subnet,
trained with several seeds, thresholds fitted on validation for targets of expected MACs, and
test accuracy at each front subnet's MACs beside that subnet's own, as the run handed it
back and after as much more training as the multi-exit model had (the matched comparison)."""

from __future__ import annotations

import statistics

from nat.folder import open_run
from nat.io.checkpoint import load_subnet
from nat.io.files import mean_std
from nat.multiexit import judge_multi_exit, most_accurate, run_front
from nat.prepare import load_data
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate, finetune

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
    trained = _train_front(pairs, data, s.multiexit_seeds, s.multiexit_epochs, first["lr"])
    versus = []
    for i, f in enumerate(first["versus_front"]):
        accs = [d["versus_front"][i]["multi_exit_test_accuracy"] for d in docs]
        shown = "-" if None in accs else _pct(accs)
        versus.append(
            [f"{f['params']:,}", f"{f['macs']:,}", f"{100 * f['single_exit_test_accuracy']:.1f}",
             _pct(trained[(f["params"], f["macs"])]), shown]
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
            "At each front subnet's MACs: the single-exit subnet as the run handed it back, "
            f"the same after {s.multiexit_epochs} more epoch(s) at lr {first['lr']} (the "
            "multi-exit model's training; same seeds), and the multi-exit model",
            ["front params", "front MACs", "front test %", "front, trained as long", "multi-exit"],
            versus,
        ),
    ]
    return Result(
        data={
            "runs": docs,
            "front_trained": [
                {"params": p, "macs": m, "test": accs} for (p, m), accs in trained.items()
            ],
        },
        sections=sections,
        copies={"multiexit.png": bench.out / f"multiexit-{s.multiexit_seeds[0]}" / "multiexit.png"},
    )


def _train_front(
    pairs: list, data, seeds: tuple[int, ...], epochs: int, lr: float
) -> dict[tuple[int, int], list[float]]:
    """Test accuracy of each front subnet after ``epochs`` more epochs of plain fine-tuning
    at ``lr``, per seed: the multi-exit model's extra training, given to the front too, so the
    curves differ by the exits alone. Keyed by (params, MACs)."""
    test = SubnetEvaluator.batches(data.test)
    out = {}
    for folder, config in pairs:
        accs = []
        for seed in seeds:
            net, _ = load_subnet(folder)
            finetune(net, data, net.arch.resolution, epochs, lr=lr, seed=seed)
            accs.append(evaluate(net, test, net.arch.resolution))
        out[(config["params"], config["macs"])] = accs
        label = f"front subnet {config['params']:,} params, {epochs} more epoch(s)"
        print(f"{label}: {_pct(accs)}", flush=True)
    return out


def _pct(values: list[float]) -> str:
    return pct(*mean_std(values))
