"""Ray figures: real evaluations per second in this process and with 1 and 2 Ray workers,
the per-task overhead of Ray, the time to resume a run and what it checkpoints.

    python scripts/bench_ray.py [--archs 32] [--out results/ray.json]

Evaluations: MBConv subnets of a digits supernet at 24 px, BatchNorm recalibrated on 10
batches of 64 images, 179 validation images. Worker start-up (data loading) is excluded: each
configuration is warmed up on other subnets first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import search_spaces
import supernets
from nat.data import data_settings, load_from_settings
from nat.distributed import RayRunner, ray_session
from nat.engine import NATSearch, SearchConfig
from nat.evaluate import SubnetEvaluator
from nat.files import write_json


def _rate(runner, net, archs) -> float:
    start = time.perf_counter()
    runner(net, archs)
    return len(archs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=32)
    parser.add_argument("--out", default="results/ray.json")
    args = parser.parse_args()
    settings = data_settings("digits", 24, 0)
    data = load_from_settings(settings)
    space = search_spaces.get("mbv2", resolutions=(16, 20, 24), width_mults=(0.25, 0.5))
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10).eval()
    X = space.sample(2 * args.archs, np.random.default_rng(0))
    warm, archs = ([space.decode(x) for x in X[i::2]] for i in (0, 1))
    results: dict = {"archs": args.archs}

    local = SubnetEvaluator(data, 10)
    local(net, warm[:2])
    results["in_process_evals_per_s"] = _rate(local, net, archs)
    for workers in (1, 2):
        with ray_session(workers=workers):
            # Ray gives each worker one CPU, so one torch thread each, as in `nat search`.
            runner = RayRunner(settings, space, 10, workers, bn_batches=10, threads=1)
            runner(net, warm[: 2 * workers])
            results[f"ray_{workers}_evals_per_s"] = _rate(runner, net, archs)
            if workers == 1:  # the price of a task: a round trip to an idle actor
                actor = runner.actors[0]
                import ray

                times = []
                for _ in range(200):
                    start = time.perf_counter()
                    ray.get(actor.pid.remote())
                    times.append(time.perf_counter() - start)
                results["ray_task_overhead_ms"] = 1000 * statistics.median(times)
                start = time.perf_counter()
                runner._published = None
                runner._publish(net)
                results["ray_put_weights_ms"] = 1000 * (time.perf_counter() - start)
    results["ratio_2_to_1_workers"] = results["ray_2_evals_per_s"] / results["ray_1_evals_per_s"]

    # Resume: a small run, then reload its last snapshot.
    with tempfile.TemporaryDirectory() as folder:
        config = SearchConfig(
            iterations=1,
            doe_size=6,
            candidates=3,
            population=12,
            generations=4,
            adapt_epochs=1,
            bn_batches=4,
        )
        NATSearch(net, data, config, folder, progress=False).run()
        snapshot = Path(folder) / "resume"
        sizes = {p.name: p.stat().st_size for p in snapshot.iterdir()}
        start = time.perf_counter()
        NATSearch.resume(folder, data, progress=False)
        results["resume_load_s"] = time.perf_counter() - start
        results["checkpoint_bytes_per_iteration"] = sum(sizes.values())
        results["checkpoint_files"] = sizes
    results["supernet_params"] = sum(p.numel() for p in net.parameters())
    results["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(args.out, results)
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
