"""Figures of the foundation: analytic complexity throughput, supernet vs extracted forward
time, and supernet training on digits.

    python scripts/bench_foundation.py                 # everything (about 10 minutes here)
    python scripts/bench_foundation.py --only complexity forward
    python scripts/bench_foundation.py --out results/foundation.json

Times are medians over repeats; the forward comparison interleaves the supernet and the
extracted model so that drift of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import search_spaces
import supernets
from nat.data import load_dataset, make_loader
from nat.files import write_json
from nat.profile import profile
from nat.train import TrainConfig, evaluate_subnet, train_supernet


def bench_complexity(population: int = 10_000, repeats: int = 5) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name)
        X = space.sample(population, np.random.default_rng(0))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            space.complexity(X, 10)
            times.append(time.perf_counter() - start)
        # The same for a few configs one by one, building and profiling a model.
        sample = X[:5]
        start = time.perf_counter()
        for x in sample:
            arch = space.decode(x)
            profile(supernets.build_static(arch, 10), arch.resolution)
        per_model = (time.perf_counter() - start) / len(sample)
        rows.append(
            {
                "space": name,
                "population": population,
                "analytic_configs_per_s": population / statistics.median(times),
                "build_and_profile_configs_per_s": 1 / per_model,
            }
        )
    return rows


def _seconds(model, images) -> float:
    start = time.perf_counter()
    model(images)
    return time.perf_counter() - start


@torch.no_grad()
def bench_forward(batch: int = 64, resolution: int = 32, repeats: int = 15) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name, resolutions=(resolution,))
        net = supernets.build_supernet(space, 10).eval()
        middle = space.repair((space.lower + space.upper) / 2)
        sizes = {
            "largest": space.largest(),
            "middle": space.decode(middle),
            "smallest": space.smallest(),
        }
        images = torch.randn(batch, 3, resolution, resolution)
        for label, arch in sizes.items():
            net.set_active(arch)
            model = net.extract(arch).eval()
            net(images), model(images)  # warm-up
            super_times, static_times = [], []
            for _ in range(repeats):  # interleaved
                super_times.append(_seconds(net, images))
                static_times.append(_seconds(model, images))
            t_super, t_static = statistics.median(super_times), statistics.median(static_times)
            rows.append(
                {
                    "space": name,
                    "subnet": label,
                    "macs": space.complexity(arch, 10)[1],
                    "supernet_ms": 1000 * t_super,
                    "extracted_ms": 1000 * t_static,
                    "ratio": t_super / t_static,
                }
            )
    return rows


def bench_digits(epochs: int = 5) -> list[dict]:
    """The README's main job: train on digits at 16-24 px, widths 0.25-0.5 (ResNet 0.125-0.25)."""
    data = load_dataset("digits", image_size=24, seed=0)
    rows = []
    for name in search_spaces.list_spaces():
        widths = (0.125, 0.25) if name == "resnet" else (0.25, 0.5)
        space = search_spaces.get(name, resolutions=(16, 20, 24), width_mults=widths)
        torch.manual_seed(0)
        net = supernets.build_supernet(space, data.num_classes)
        start = time.perf_counter()
        train_supernet(net, data, TrainConfig(epochs=epochs), progress=False)
        seconds = time.perf_counter() - start
        bn = make_loader(data.train_eval, 64, shuffle=True, seed=0)
        val = make_loader(data.val, 256, shuffle=False)
        row = {"space": name, "epochs": epochs, "train_s": seconds}
        for label, arch in (("largest", space.largest()), ("smallest", space.smallest())):
            row[f"{label}_val_acc"] = evaluate_subnet(net, arch, bn, val)[0]
            row[f"{label}_macs"] = space.complexity(arch, 10)[1]
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3f}" if v < 100 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


BENCHES = {"complexity": bench_complexity, "forward": bench_forward, "digits": bench_digits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    parser.add_argument("--out", default="results/foundation.json", help="JSON results file")
    args = parser.parse_args()
    results = {
        "machine": {
            "nproc": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        }
    }
    print(results["machine"])
    for name in args.only:
        rows = BENCHES[name]()
        results[name] = rows
        print(f"\n## {name}\n{_table(rows)}", flush=True)
    write_json(Path(args.out), results)
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
