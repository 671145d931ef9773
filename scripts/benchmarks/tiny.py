"""15. Down to the microcontroller: int8 models under flash and SRAM budgets.

Two parts. First, the analytic peak activation memory and model size that the search budgets
with, against what built models measure: the exported ONNX graph's tensor lifetimes, and the
bytes of the int8 file's initializers, on random subnets of every family. Then MLPerf Tiny's
image setting on CIFAR-10: ResNet-8 (torchvision basic blocks, 16-32-64 channels) sets the
flash and SRAM budgets at int8, and three models share them and the wall time: the int8
model searched in the ResNet space, the Feillet heuristic's architecture trained from
scratch, and ResNet-8 itself, both trained with the engine's recipe. Each row: float and
int8 test accuracy, flash, peak SRAM, and onnxruntime latency at batch 1 (1 thread, fastest
of interleaved rounds).
"""

from __future__ import annotations

import collections
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import search_spaces
import supernets
from nat.data import resize_batch
from nat.engine.heuristic import feillet_within
from nat.io.deploy import OnnxModel, export_int8, export_onnx, sample_images
from nat.io.footprint import (
    analytic_footprint,
    initializer_bytes,
    measured_footprint,
    peak_activation_bytes,
    quantize_int8,
)
from nat.latency import fastest_ms, runner
from nat.prepare import load_data
from nat.profile import profile
from nat.quantize import INT8_CALIBRATION_IMAGES
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate
from nat.training.trainer import Trainer

from .common import Bench, Result, Table
from .quality import handed_configs, quality_base

_FAMILIES = ("mbv2", "resnet", "shufflenetv2")


def resnet8(num_classes: int) -> nn.Module:
    """MLPerf Tiny's ResNet-8 for 32-px images, from torchvision's basic blocks: a 3x3 stem
    of 16 channels, one block of 16, 32 and 64 channels (the last two at stride 2, with a
    1x1 projection), global pooling, a linear classifier."""

    def block(c_in: int, c_out: int, stride: int) -> nn.Module:
        down = None
        if stride != 1 or c_in != c_out:
            down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        return BasicBlock(c_in, c_out, stride, down)

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        block(16, 16, 1),
        block(16, 32, 2),
        block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def _trained_like(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm biases drawn at random: a fresh model's zero biases fold into
    identical initializers that the exporters store once, so its file is smaller than the
    trained one's."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.bias)
    return model


def _footprints(n: int) -> list[dict]:
    """Analytic against measured bytes on ``n`` random subnets a family (trained-like
    BatchNorm, so every folded bias is stored)."""
    rows = []
    for name in _FAMILIES:
        space = search_spaces.get(name)
        X = space.sample(n, np.random.default_rng(15))
        analytic = analytic_footprint(space.costs(X, 10))
        errors: dict[str, list[float]] = {"speed": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i, x in enumerate(X):
                arch = space.decode(x)
                model = _trained_like(supernets.build_static(arch, 10).eval())
                side = arch.resolution
                export_onnx(model, torch.randn(2, 3, side, side), Path(tmp) / "m.onnx")
                fp32 = (Path(tmp) / "m.onnx").read_bytes()
                int8 = quantize_int8(
                    fp32, [np.random.default_rng(i).normal(size=(4, 3, side, side))]
                )
                measured = measured_footprint(fp32, int8)
                predicted = {k: v[i] for k, v in analytic.items()}
                for key in predicted:
                    errors.setdefault(key, []).append(100 * (predicted[key] / measured[key] - 1))
                shape = (1, 3, side, side)
                calls = [runner(nn.Identity(), shape, onnx_bytes=b) for b in (fp32, int8)]
                float_ms, int8_ms = fastest_ms(calls, threads=1)
                errors["speed"].append(float(int8_ms / float_ms))
        rows.append({"family": name, "subnets": n, **errors})
    return rows


def _deployed(model: nn.Module, resolution: int, data, batches, method: str, **extra) -> dict:
    """Float and int8 scores, bytes and latency of a trained torch model."""
    calibration = resize_batch(sample_images(data.train_eval, INT8_CALIBRATION_IMAGES), resolution)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
        export_onnx(model.eval(), calibration[:8], float_path)
        export_int8(float_path, calibration, int8_path)
        return _scored(float_path, int8_path, resolution, batches, method, **extra)


def _scored(float_path: Path, int8_path: Path, resolution: int, batches, method: str, **extra):
    fp32, int8 = float_path.read_bytes(), int8_path.read_bytes()
    cpu = torch.device("cpu")
    shape = (1, 3, resolution, resolution)
    calls = [runner(nn.Identity(), shape, onnx_bytes=b) for b in (fp32, int8)]
    float_ms, int8_ms = fastest_ms(calls, threads=1)
    return {
        "method": method,
        **extra,
        "float_test": evaluate(OnnxModel(fp32), batches[1], resolution, cpu),
        "int8_val": evaluate(OnnxModel(int8), batches[0], resolution, cpu),
        "int8_test": evaluate(OnnxModel(int8), batches[1], resolution, cpu),
        "flash": initializer_bytes(int8),
        "sram": peak_activation_bytes(fp32, 1),
        "float_ms": float(float_ms),
        "int8_ms": float(int8_ms),
    }


def kernel_ms(model: bytes, resolution: int, runs: int = 200) -> list[tuple[str, str, float]]:
    """(kernel, operator type, milliseconds a batch-1 run) for every kernel of an ONNX model
    in the order it runs, by onnxruntime's own profiler (one thread, the kernels as the
    session fused them): where an int8 model's time goes."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "p")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.zeros((1, 3, resolution, resolution), "f4")}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    spent: dict[tuple[str, str], float] = {}  # in the order of the first run
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = (event["name"].removesuffix("_kernel_time"), event["args"]["op_name"])
            spent[key] = spent.get(key, 0.0) + event["dur"] / 1000 / runs  # microseconds
    return [(name, op, ms) for (name, op), ms in spent.items()]


def by_operator(kernels: list[tuple[str, str, float]]) -> dict[str, float]:
    """Milliseconds by operator type, most first."""
    spent: collections.Counter = collections.Counter()
    for _, op, ms in kernels:
        spent[op] += ms
    return dict(spent.most_common())


def conv_rows(float_model: bytes, kernels: dict[str, list]) -> list[list[str]]:
    """Each convolution of a float ONNX file with its fp32 and int8 kernel times (``kernels``:
    :func:`kernel_ms` of the float file and of its int8 version, by precision). onnxruntime
    names an int8 kernel after the float file's Conv node and a fused float kernel after the
    tensor it writes (the convolution's, or that of a ReLU or Add fused into it)."""
    import onnx

    graph = onnx.load_from_string(float_model).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    convs = [node for node in graph.node if node.op_type == "Conv"]
    owner: dict[str, int] = {}
    for i, conv in enumerate(convs):
        owner[conv.name] = i
        reached = [conv.output[0]]
        while reached:
            tensor = reached.pop()
            owner.setdefault(tensor, i)
            reached += [n.output[0] for n in consumers[tensor] if n.op_type in ("Relu", "Add")]
    ms = {precision: [0.0] * len(convs) for precision in kernels}
    for precision, timed in kernels.items():
        for name, op, t in timed:
            base = re.sub(r"(_nchwc|_token_\d+)$", "", name)
            if op in ("Conv", "QLinearConv") and base in owner:
                ms[precision][owner[base]] += t
    rows = []
    for i, conv in enumerate(convs):
        c_out, c_in, k, _ = shapes[conv.input[1]]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        groups, stride = attrs.get("group", 1), attrs.get("strides", [1])[0]
        layer = conv.input[1].removesuffix(".weight").removesuffix(".conv")
        f, q = ms["fp32"][i], ms["int8"][i]
        rows.append(
            [
                f"{layer}: {k}x{k}, {c_in * groups}->{c_out}, stride {stride}",
                f"{f:.4f}",
                f"{q:.4f}",
                f"{q / f:.2f}" if f > 0 else "-",
            ]
        )
    return rows


def _trained(model: nn.Module, resolution: int, base: RunSpec, data, seconds: float) -> nn.Module:
    torch.manual_seed(0)
    run = Trainer(
        model, data, resolution, base.finetune, batch_size=base.batch_size, seed=0, seconds=seconds
    )
    run.train()
    return run.finish()


def bench_tiny(bench: Bench) -> Result:
    s = bench.s
    footprint = bench.cached(
        "tiny-footprint",
        {"n": s.tiny_footprint_subnets, "v": 2},
        lambda: _footprints(s.tiny_footprint_subnets),
    )
    base = RunSpec.from_options(quality_base(bench), space=s.tiny_space)
    data = load_data(base)
    batches = (SubnetEvaluator.batches(data.val), SubnetEvaluator.batches(data.test))
    resolution = s.quality_resolution
    # ResNet-8 sets the budgets: its int8 flash and peak SRAM.
    reference = _trained_like(resnet8(data.num_classes))
    params, _ = profile(reference, resolution)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(reference.eval(), torch.randn(2, 3, resolution, resolution), path)
        # Byte counts do not depend on the calibration's values: any images will do.
        calibration = [np.random.default_rng(0).normal(size=(2, 3, resolution, resolution))]
        flash = initializer_bytes(quantize_int8(path.read_bytes(), calibration))
        sram = peak_activation_bytes(path.read_bytes(), 1)
    flash, sram = (round(v * s.tiny_budget_multiple) for v in (flash, sram))
    spec = RunSpec.from_options(
        base,
        max_model_size=flash,
        max_peak_memory=sram,
        precision="int8",
        width_mults=None,  # fitted to the budgets
        time_limit=s.tiny_limit,
        onnx=True,
        **s.tiny_options,
    )
    folder, wall = bench.cached_run("tiny-search", spec)
    span = min(wall, s.peer_seconds or wall)  # the peers' training time
    rows = []
    for config in handed_configs(folder):
        front = folder / config["folder"]
        rows.append(
            _scored(
                front / "model.onnx",
                front / "model.int8.onnx",
                config["arch"]["resolution"],
                batches,
                f"(a) nat search --precision int8, {config['folder']} ({config['source']})",
                params=config["params"],
                val=config["val_accuracy"],
            )
        )
    first = handed_configs(folder)[-1]  # the model at the full budget
    float_file = (folder / first["folder"] / "model.onnx").read_bytes()
    kernels = {
        name: kernel_ms((folder / first["folder"] / file).read_bytes(), first["arch"]["resolution"])
        for name, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))
    }
    ops = {name: by_operator(k) for name, k in kernels.items()}
    layers = conv_rows(float_file, kernels)
    space = search_spaces.from_dict(first["space"])  # widths fitted
    heuristic = feillet_within(
        {"model_size": flash, "peak_memory": sram}, data.num_classes, space, "int8"
    ).arch
    key = {"arch": heuristic.to_dict(), "seconds": span, "recipe": str(base.finetune)}

    def scratch() -> dict:
        model = _trained(
            supernets.build_static(heuristic, data.num_classes),
            heuristic.resolution,
            base,
            data,
            span,
        )
        return _deployed(
            model,
            heuristic.resolution,
            data,
            batches,
            "(b) Feillet heuristic from scratch",
            params=profile(model, heuristic.resolution)[0],
        )

    def mlperf() -> dict:
        model = _trained(resnet8(data.num_classes), resolution, base, data, span)
        return _deployed(
            model, resolution, data, batches, "(c) ResNet-8 (MLPerf Tiny)", params=params
        )

    rows.append(bench.cached("tiny-heuristic", key, scratch))
    rows.append(bench.cached("tiny-resnet8", {**key, "arch": "resnet8"}, mlperf))
    return Result(
        data={
            "footprint": footprint,
            "budgets": {"flash": flash, "sram": sram},
            "wall": wall,
            "span": span,
            "rows": rows,
            "op_ms": ops,
            "conv_ms": layers,
        },
        sections=[
            Table(
                "Analytic against measured (% error: min / median / max): peak activation "
                "memory (ONNX tensor lifetimes) and model size (ONNX initializers, float and "
                "int8 QDQ); and int8 over fp32 batch-1 latency (onnxruntime, 1 thread)",
                ["family", "subnets", "peak memory", "fp32 size", "int8 size", "int8/fp32 ms"],
                [
                    [r["family"], r["subnets"]]
                    + [
                        " / ".join(f"{v:+.2f}" for v in (min(e), float(np.median(e)), max(e)))
                        for e in (r["peak int8"], r["size fp32"], r["size int8"])
                    ]
                    + [" / ".join(f"{v:.2f}" for v in np.percentile(r["speed"], [0, 50, 100]))]
                    for r in footprint
                ],
            ),
            Table(
                f"MLPerf Tiny setting: budgets from ResNet-8 ({flash:,} bytes of int8 flash, "
                f"{sram:,} bytes of peak int8 SRAM); the search ran {wall:.0f} s, the others "
                f"trained {span:.0f} s; test on {len(data.test):,} held-out images",
                [
                    "method",
                    "params",
                    "float test %",
                    "int8 test %",
                    "drop",
                    "flash B",
                    "SRAM B",
                    "fp32 ms",
                    "int8 ms",
                    "int8/fp32",
                ],
                [
                    [
                        r["method"],
                        f"{r['params']:,}",
                        f"{100 * r['float_test']:.1f}",
                        f"{100 * r['int8_test']:.1f}",
                        f"{100 * (r['float_test'] - r['int8_test']):+.1f}",
                        f"{r['flash']:,}",
                        f"{r['sram']:,}",
                        f"{r['float_ms']:.3f}",
                        f"{r['int8_ms']:.3f}",
                        f"{r['int8_ms'] / r['float_ms']:.2f}",
                    ]
                    for r in rows
                ],
            ),
            Table(
                f"Where the time goes: {first['folder']} of the search, ms a batch-1 run by "
                "operator type (onnxruntime's profiler, 1 thread, kernels as fused)",
                ["operator", "fp32 ms", "int8 ms"],
                [
                    [op, *(f"{ops[p].get(op, 0.0):.4f}" for p in ("fp32", "int8"))]
                    for op in dict.fromkeys([*ops["fp32"], *ops["int8"]])
                ]
                + [["total", *(f"{sum(ops[p].values()):.4f}" for p in ("fp32", "int8"))]],
            ),
            Table(
                "The same by convolution (ms a batch-1 run; a ReLU or Add fused into a "
                "convolution counts with it)",
                ["convolution", "fp32 ms", "int8 ms", "int8/fp32"],
                layers,
            ),
        ],
    )
