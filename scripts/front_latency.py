"""Measure a search run's exported front at batch 1, one thread: the ``model.onnx`` each
subnet ships with in onnxruntime, and its ``weights.pt`` in torch eager, against the latency
the run predicted (``predicted_latency_ms`` in config.json, when the run had a latency table).

    python scripts/front_latency.py runs/search-mbv2 [--rounds 6] [--archive]

Prints one row per front subnet and, for a run with ``--max-latency``, whether each measured
latency fits the budget. The run's latency table predicts at the machine's speed when it was
built; the table's calibration subnets are timed alongside the front, and their measured ÷
predicted ratio shows how far that speed has drifted since. ``--archive`` also times every
archived subnet the search predicted within the budget (exported as model.onnx is, with
untrained weights: latency does not depend on them), the constraint's check beyond the front.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `nat search` run folder")
    parser.add_argument("--rounds", type=int, default=6, help="timing rounds (default 6)")
    parser.add_argument(
        "--archive", action="store_true", help="also time the archive's subnets within budget"
    )
    args = parser.parse_args(argv)
    folders = sorted((args.run / "front").glob("[0-9][0-9]"))
    if not folders:
        parser.error(f"{args.run}/front/ holds no exported subnet: is it a `nat search` run?")

    from nat.io.checkpoint import load_subnet
    from nat.latency import fastest_ms, latency_table_of, reference_calls, runner, speed_factor
    from nat.spec import RunSpec

    spec = RunSpec.from_dict(json.loads((args.run / "run.json").read_text()))
    budget = spec.search.max_latency
    print(f"budget: {budget} ms" if budget else "no latency budget")
    configs, onnx_calls, torch_calls = [], [], []
    for folder in folders:
        model, config = load_subnet(folder)
        side = config["arch"]["resolution"]
        shape = (1, 3, side, side)
        onnx = (folder / "model.onnx").read_bytes()
        onnx_calls.append(runner(model, shape, "onnxruntime", 1, onnx_bytes=onnx))
        torch_calls.append(runner(model, shape, "torch", 1))
        configs.append(config)
    table = latency_table_of(spec.search, spec.build_space(), configs[0]["num_classes"])
    references = []
    if table is not None:
        if (table.machine["runtime"], table.machine["threads"]) != ("onnxruntime", 1):
            print("the run's table is not for onnxruntime on one thread: no drift check")
        else:
            X_ref, references = reference_calls(spec.build_space(), table.num_classes)
    # Interleaved rounds, the fastest run of each: what the latency table measures.
    onnx_ms = fastest_ms(onnx_calls + references, 1, args.rounds)
    if references:
        onnx_ms, ref_ms = onnx_ms[: len(folders)], onnx_ms[len(folders) :]
        factor = speed_factor(table, X_ref, ref_ms)
        print(f"the machine runs {factor:.2f}x as slow as when the table was built")
    torch_ms = fastest_ms(torch_calls, 1, args.rounds)
    print("| subnet | params | predicted ms | onnxruntime ms | torch ms | torch ÷ onnxruntime |")
    print("|---|---|---|---|---|---|")
    for folder, config, o, t in zip(folders, configs, onnx_ms, torch_ms, strict=True):
        predicted = config.get("predicted_latency_ms")
        shown = "-" if predicted is None else f"{predicted:.3f}"
        print(
            f"| {folder.name} | {config['params']:,} | {shown} | {o:.3f} | {t:.3f} | {t / o:.2f} |"
        )
    over = int(np.sum(onnx_ms > budget)) if budget else 0
    if budget:
        print(f"{over} of {len(folders)} front subnets measured over the {budget} ms budget")
    if args.archive and table is not None:
        _time_archive(args.run, spec, table, budget, args.rounds)
    return 0


def _time_archive(run: Path, spec, table, budget: float | None, rounds: int) -> None:
    from nat.engine.archive import Archive
    from nat.latency import fastest_ms, reference_calls, runner, speed_factor
    from supernets import build_static

    archive = Archive.load(run / "archive.json")
    space = spec.build_space()
    limit = budget if budget else float("inf")
    X = np.array([e.x for e in archive.entries if e.latency is not None and e.latency <= limit])
    if not len(X):
        print("no archived subnet has a predicted latency within the budget")
        return
    print(f"exporting {len(X)} archived subnets predicted within the budget", flush=True)
    calls = []
    for x in X:
        arch = space.decode(x)
        model = build_static(arch, archive.num_classes).eval()
        side = arch.resolution
        calls.append(runner(model, (1, 3, side, side), "onnxruntime", 1, dynamo=True))
    X_ref, references = reference_calls(space, table.num_classes)
    measured = fastest_ms(calls + references, 1, rounds)
    measured, ref_ms = measured[: len(X)], measured[len(X) :]
    predicted = table.predict(X)
    error = np.abs(predicted - measured) / measured
    factor = speed_factor(table, X_ref, ref_ms)
    print(
        f"archive: {len(X)} subnets, median |error| {np.median(error):.1%} (worst "
        f"{error.max():.1%}), machine {factor:.2f}x as slow as at the table's build"
    )
    if budget:
        worst = float(np.max(measured / budget - 1))
        n_over = int(np.sum(measured > budget))
        print(f"{n_over} of {len(X)} measured over the {budget} ms budget (worst {worst:+.1%})")


if __name__ == "__main__":
    raise SystemExit(main())
