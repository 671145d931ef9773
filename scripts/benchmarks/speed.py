"""5. Speed: analytic complexity vs profiling, supernet vs extracted forward passes, training
throughput against torchvision's models, and real evaluations on Ray workers. Figures that
compare two things are measured side by side, interleaved, in one run."""

from __future__ import annotations

import statistics
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import search_spaces
import supernets
from nat.backends.ray import RayRunner, ray_session
from nat.engine.archive import Archive
from nat.engine.heuristic import reference_arch
from nat.engine.loop import sample_feasible
from nat.profile import profile

from .common import Bench, Result, Settings, Table

TORCHVISION = {"resnet": "resnet18", "mbv2": "mobilenet_v2", "shufflenetv2": "shufflenet_v2_x1_0"}


def bench_speed(bench: Bench) -> Result:
    s = bench.s
    complexity = complexity_rate(s)
    forward = forward_ratio(s)
    training = training_throughput(s)
    ray = ray_throughput(bench)
    sections = [
        Table(
            f"Analytic complexity of {s.complexity_population:,} configs at once vs building "
            "and profiling a model per config (configs/s)",
            ["space", "analytic", "build + profile", "ratio"],
            [
                [
                    r["space"],
                    f"{r['analytic']:,.0f}",
                    f"{r['build_profile']:.1f}",
                    f"{r['analytic'] / r['build_profile']:,.0f}",
                ]
                for r in complexity
            ],
        ),
        Table(
            f"Supernet forward ÷ extracted static forward (batch {s.forward_batch}, "
            f"{s.forward_resolution} px, eval mode, median of {s.forward_repeats} interleaved "
            "runs)",
            ["space", "subnet", "MACs", "supernet ms", "extracted ms", "ratio"],
            [
                [
                    r["space"],
                    r["subnet"],
                    f"{r['macs']:,}",
                    f"{r['supernet_ms']:.1f}",
                    f"{r['extracted_ms']:.1f}",
                    f"{r['ratio']:.3f}",
                ]
                for r in forward
            ],
        ),
        Table(
            f"Training throughput, images/s (batch {s.train_batch}, {s.train_resolution} px, "
            f"SGD steps, median of {s.train_steps} interleaved): the torchvision model vs the "
            "same architecture active in the supernet and extracted from it",
            [
                "model",
                "same params & MACs",
                "torchvision",
                "extracted",
                "supernet",
                "supernet ÷ torchvision",
            ],
            [
                [
                    r["model"],
                    "yes" if r["same_counts"] else "NO",
                    f"{r['torchvision']:.0f}",
                    f"{r['extracted']:.0f}",
                    f"{r['supernet']:.0f}",
                    f"{r['ratio']:.3f}",
                ]
                for r in training
            ],
        ),
        Table(
            f"Real evaluations/s of {ray['archs']} subnets ({s.space}, {s.bn_batches} "
            f"BatchNorm batches, {len(bench.data.val)} validation images)",
            [
                "in this process",
                "Ray, 1 worker",
                "Ray, 2 workers",
                "2 ÷ 1 workers",
                "Ray task overhead ms",
            ],
            [
                [
                    f"{ray[k]:.2f}"
                    for k in ("in_process", "ray_1", "ray_2", "ratio_2_to_1", "task_overhead_ms")
                ]
            ],
        ),
    ]
    return Result(
        data={"complexity": complexity, "forward": forward, "training": training, "ray": ray},
        sections=sections,
    )


def complexity_rate(s: Settings) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name)
        X = space.sample(s.complexity_population, np.random.default_rng(0))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            space.complexity(X, 10)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for x in X[: s.profiled_configs]:
            arch = space.decode(x)
            profile(supernets.build_static(arch, 10), arch.resolution)
        per_model = (time.perf_counter() - start) / s.profiled_configs
        rows.append(
            {
                "space": name,
                "analytic": len(X) / statistics.median(times),
                "build_profile": 1 / per_model,
            }
        )
    return rows


@torch.no_grad()
def forward_ratio(s: Settings) -> list[dict]:
    rows = []
    for name in search_spaces.list_spaces():
        space = search_spaces.get(name, resolutions=(s.forward_resolution,))
        net = supernets.build_supernet(space, 10).eval()
        middle = space.decode(space.repair((space.lower + space.upper) / 2))
        images = torch.randn(s.forward_batch, 3, s.forward_resolution, s.forward_resolution)
        for label, arch in (
            ("largest", space.largest()),
            ("middle", middle),
            ("smallest", space.smallest()),
        ):
            net.set_active(arch)
            model = net.extract(arch).eval()
            t_super, t_static = interleaved(
                partial(net, images), partial(model, images), repeats=s.forward_repeats
            )
            rows.append(
                {
                    "space": name,
                    "subnet": label,
                    "macs": int(space.complexity(arch, 10)[1]),
                    "supernet_ms": 1000 * t_super,
                    "extracted_ms": 1000 * t_static,
                    "ratio": t_super / t_static,
                }
            )
    return rows


def training_throughput(s: Settings) -> list[dict]:
    import torchvision

    rows = []
    for name, tv_name in TORCHVISION.items():
        space = search_spaces.get(
            name, stem="imagenet", resolutions=(s.train_resolution,), width_mults=(0.5, 1.0)
        )
        arch = reference_arch(space)
        torch.manual_seed(0)
        if name == "shufflenetv2":
            # The space rounds channels to multiples of 8 (116 -> 120): torchvision's class
            # built with the same channels is the equivalent model.
            tv_name = "ShuffleNetV2"
            channels = [
                arch.stem_channels,
                *(st.channels for st in arch.stages),
                arch.head_channels,
            ]
            repeats = [len(st.blocks) for st in arch.stages]
            tv_model = torchvision.models.ShuffleNetV2(repeats, channels, num_classes=10)
        else:
            tv_model = torchvision.models.get_model(tv_name, num_classes=10)
        same = profile(tv_model, s.train_resolution) == tuple(
            int(v) for v in space.complexity(arch, 10)
        )
        net = supernets.build_supernet(space, 10)
        net.set_active(arch)
        extracted = net.extract(arch)
        images = torch.randn(s.train_batch, 3, s.train_resolution, s.train_resolution)
        labels = torch.randint(0, 10, (s.train_batch,))
        steps = [_train_step(m, images, labels) for m in (tv_model, extracted, net)]
        times = interleaved(*steps, repeats=s.train_steps)
        tv, ex, su = (s.train_batch / t for t in times)
        rows.append(
            {
                "model": tv_name,
                "same_counts": same,
                "torchvision": tv,
                "extracted": ex,
                "supernet": su,
                "ratio": su / tv,
            }
        )
    return rows


def _train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def interleaved(*calls, repeats: int) -> list[float]:
    """Median seconds of each call, run in turn ``repeats`` times after one warm-up each, so
    that drift of a shared machine hits all alike."""
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, t in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def ray_throughput(bench: Bench) -> dict:
    import ray

    s, space = bench.s, bench.space
    net = bench.pretrained()
    X = sample_feasible(
        bench.budgets, 2 * s.ray_archs, np.random.default_rng(7), Archive(space, 10)
    )
    warm, archs = ([space.decode(x) for x in X[i::2]] for i in (0, 1))
    result = {"archs": len(archs)}
    local = bench.evaluator(0)
    local(net, warm[:2])
    result["in_process"] = _rate(local, net, archs)
    # One Ray session for both: starting Ray costs seconds that the rates do not include.
    with ray_session(workers=2):
        for workers in (1, 2):
            # One CPU per worker, so one torch thread each, as in `nat search --workers`.
            runner = RayRunner(
                bench.data_settings,
                space,
                bench.data.num_classes,
                workers,
                bn_batches=s.bn_batches,
                threads=1,
            )
            runner(net, warm[: 2 * workers])  # start-up (data loading) is not counted
            result[f"ray_{workers}"] = _rate(runner, net, archs)
            if workers == 1:
                times = []
                for _ in range(100):
                    start = time.perf_counter()
                    ray.get(runner.actors[0].pid.remote())
                    times.append(time.perf_counter() - start)
                result["task_overhead_ms"] = 1000 * statistics.median(times)
            for actor in runner.actors:  # free its CPU for the next runner
                ray.kill(actor)
    result["ratio_2_to_1"] = result["ray_2"] / result["ray_1"]
    return result


def _rate(runner, net, archs) -> float:
    start = time.perf_counter()
    runner(net, archs)
    return len(archs) / (time.perf_counter() - start)
