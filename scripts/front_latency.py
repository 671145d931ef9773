"""Measure a search run's exported front at batch 1, one thread: the ``model.onnx`` each
subnet ships with in onnxruntime, and its ``weights.pt`` in torch eager, against the latency
the run predicted (``predicted_latency_ms`` in config.json, when the run had a latency table).

    python scripts/front_latency.py runs/search-mbv2 [--rounds 6]

Prints one row per front subnet and, for a run with ``--max-latency``, whether each measured
latency fits the budget.
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
    args = parser.parse_args(argv)
    folders = sorted((args.run / "front").glob("[0-9][0-9]"))
    if not folders:
        parser.error(f"{args.run}/front/ holds no exported subnet: is it a `nat search` run?")

    from nat.io.checkpoint import load_subnet
    from nat.latency import fastest_ms, runner

    spec = json.loads((args.run / "run.json").read_text())
    budget = spec["search"].get("max_latency")
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
    # Interleaved rounds, the fastest run of each: what the latency table measures.
    onnx_ms = fastest_ms(onnx_calls, 1, args.rounds)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
