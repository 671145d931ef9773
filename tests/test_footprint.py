"""Peak activation memory and model size: the analytic counts the search budgets with agree
with what built, exported (and int8-quantised) models measure."""

import numpy as np
import pytest
import torch
from conftest import map_in_two_processes
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import search_spaces
import supernets
from nat.io.deploy import export_onnx
from nat.io.footprint import (
    analytic_footprint,
    initializer_bytes,
    measured_footprint,
    peak_activation_bytes,
    quantize_int8,
)

SPACES = ("mbv2", "resnet", "shufflenetv2")


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm away from its initial values, so every folded bias is stored."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = torch.randn(m.num_features, generator=g)
    return model.eval()


def _space(name: str) -> search_spaces.SearchSpace:
    return search_spaces.get(name, resolutions=(16, 24, 32))


def _measure(job: tuple) -> tuple[str, dict, dict]:
    """Export subnet ``i`` of ``name`` (fp32, then int8); its measured footprint against the
    analytic one. Run in a worker process."""
    name, i, x, tmp = job
    space = _space(name)
    arch = space.decode(x)
    model = _trained_like(supernets.build_static(arch, 10), i)
    r = arch.resolution
    path = tmp / f"{name}-{i}.onnx"
    export_onnx(model, torch.randn(2, 3, r, r), path)
    fp32 = path.read_bytes()
    int8 = quantize_int8(fp32, [np.random.default_rng(i).normal(size=(4, 3, r, r))])
    predicted = analytic_footprint(space.costs(x[None], 10))
    return (
        arch.to_json(),
        {k: float(v[0]) for k, v in predicted.items()},
        measured_footprint(fp32, int8),
    )


@pytest.mark.slow
def test_analytic_footprint_matches_measured_on_five_subnets_a_family(tmp_path):
    jobs = [
        (name, i, x, tmp_path)
        for name in SPACES
        for i, x in enumerate(_space(name).sample(5, np.random.default_rng(3)))
    ]
    results = map_in_two_processes(_measure, jobs)
    assert len(results) == 15
    for arch, predicted, measured in results:
        for key, value in measured.items():
            assert predicted[key] == pytest.approx(value, rel=0.05), (key, arch)
        # int8 stores about a quarter of the float bytes: the weights dominate.
        assert 0.2 < measured["size int8"] / measured["size fp32"] < 0.35


def _graph(nodes, weights, shape=(1, 4, 8, 8)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_peak_walk_keeps_a_residual_input_alive_and_runs_activations_in_place():
    w = np.zeros((4, 4, 1, 1), dtype=np.float32)
    # x -> conv -> relu -> conv -> add(x): while the second conv runs, x (kept for the
    # addition), its input and its output are alive: 3 tensors of 4*8*8; the addition
    # reads two and writes one: 3 again. The relu adds nothing.
    residual = _graph(
        [
            helper.make_node("Conv", ["x", "w"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Conv", ["b", "w"], ["c"]),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        {"w": w},
    )
    assert peak_activation_bytes(residual, 4) == 3 * 256 * 4
    assert peak_activation_bytes(residual.SerializeToString(), 1) == 3 * 256
    # Without the residual, x dies at the first conv: two tensors at most.
    chain = _graph(
        [
            helper.make_node("Conv", ["x", "w"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Conv", ["b", "w"], ["y"]),
        ],
        {"w": w},
    )
    assert peak_activation_bytes(chain, 1) == 2 * 256
    assert initializer_bytes(chain) == w.nbytes


def test_costs_refuse_an_unknown_precision():
    space = search_spaces.get("mbv2")
    costs = space.costs(space.smallest(), 10)
    with pytest.raises(ValueError, match="unknown precision 'int4'.*fp32"):
        costs.model_size("int4")
    assert costs.peak_memory("int8")[0] * 4 == costs.peak_memory("fp32")[0]


def test_quantize_int8_needs_calibration_images():
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], {})
    with pytest.raises(ValueError, match="calibration needs at least one batch"):
        quantize_int8(model.SerializeToString(), [])
