"""9. Deployment: ONNX export of random subnets of every family (dynamo exporter, checked by
onnxruntime on real images): export time, the largest logit difference against torch, and
batch-1 latency in onnxruntime against torch eager, one thread each, interleaved."""

from __future__ import annotations

import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import search_spaces
import supernets
from nat.data import resize_batch
from nat.io.deploy import export_onnx, onnx_session, sample_images

from .common import Bench, Result, Table


def _latencies(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable in ``runs``, measured interleaved after a warm-up."""
    for run in runs.values():
        for _ in range(5):
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_deploy(bench: Bench) -> Result:
    s = bench.s
    images = sample_images(bench.data.val, 32)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in search_spaces.list_spaces():
            space = search_spaces.get(name)
            if s.deploy_max_depth is not None:
                depths = [range(1, min(d, s.deploy_max_depth) + 1) for d in space.max_depths]
                space = search_spaces.get(name, depths=depths)
            X = space.sample(s.deploy_archs, np.random.default_rng(0))
            for x in X:
                arch = space.decode(x)
                model = supernets.build_static(arch, bench.data.num_classes)
                batch = resize_batch(images, arch.resolution)
                supernets.recalibrate_bn(model, [(batch, None)], batches=1)
                model.eval()
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    start = time.perf_counter()
                    diff = export_onnx(model, batch, path)
                    export_s = time.perf_counter() - start
                    session = onnx_session(path, threads=1)
                one = batch[:1]
                feed = {"images": one.numpy()}
                with torch.no_grad():
                    ms = _latencies(
                        {
                            "torch": partial(model, one),
                            "onnxruntime": partial(session.run, None, feed),
                        },
                        s.deploy_repeats,
                    )
                params, macs = space.complexity(arch, bench.data.num_classes)
                rows.append(
                    {
                        "space": name,
                        "arch": arch.to_dict(),
                        "params": int(params),
                        "macs": int(macs),
                        "export_s": export_s,
                        "max_abs_diff": diff,
                        "torch_ms": 1e3 * ms["torch"],
                        "onnxruntime_ms": 1e3 * ms["onnxruntime"],
                    }
                )
                print(
                    f"deploy {name}: {params:,} params, export {export_s:.1f} s, diff {diff:.1e}, "
                    f"torch {rows[-1]['torch_ms']:.2f} ms, onnxruntime "
                    f"{rows[-1]['onnxruntime_ms']:.2f} ms",
                    flush=True,
                )
    finally:
        torch.set_num_threads(threads)
    table = []
    for name in search_spaces.list_spaces():
        mine = [r for r in rows if r["space"] == name]
        speedup = [r["torch_ms"] / r["onnxruntime_ms"] for r in mine]
        table.append(
            [
                name,
                len(mine),
                f"{max(r['max_abs_diff'] for r in mine):.1e}",
                f"{statistics.median(r['export_s'] for r in mine):.1f}",
                f"{min(r['onnxruntime_ms'] for r in mine):.2f} to "
                f"{max(r['onnxruntime_ms'] for r in mine):.2f}",
                f"{min(r['torch_ms'] for r in mine):.2f} to {max(r['torch_ms'] for r in mine):.2f}",
                f"{statistics.median(speedup):.2f}",
            ]
        )
    title = (
        f"ONNX export of {s.deploy_archs} random subnets per family (BatchNorm calibrated on "
        f"32 validation images); latency at batch 1, one thread, median of {s.deploy_repeats} "
        "interleaved runs"
    )
    headers = [
        "space",
        "subnets",
        "worst |logit diff|",
        "median export s",
        "onnxruntime ms",
        "torch ms",
        "median torch ÷ onnxruntime",
    ]
    return Result(data={"rows": rows}, sections=[Table(title, headers, table)])
