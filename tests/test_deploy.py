"""ONNX export: onnxruntime reproduces torch's logits on real images, or nothing is written."""

import json

import numpy as np
import pytest
import torch
from conftest import map_in_two_processes
from torch import nn

import search_spaces
import supernets
from nat.data import load_dataset, resize_batch
from nat.io import deploy
from nat.io.deploy import (
    ONNX_TOLERANCE,
    OnnxMismatchError,
    export_onnx,
    onnx_session,
    sample_images,
)

SPACES = ("mbv2", "resnet", "shufflenetv2")


@pytest.fixture(scope="module")
def images():
    data = load_dataset("digits", 16, seed=0)
    return sample_images(data.test, 8)


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with BatchNorm statistics and affine parameters away from their initial
    values (zero-init γ would silence whole residual branches), so every path counts."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.2 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model.eval()


def _parity_space(name: str) -> search_spaces.SearchSpace:
    # Up to two blocks a stage: both kinds of block (downsampling, repeated) at every choice
    # of kernel, width and expansion, with fewer nodes to export than at full depth (the
    # deploy benchmark exports full-depth subnets).
    full = search_spaces.get(name)
    return search_spaces.get(name, depths=[range(1, min(d, 2) + 1) for d in full.max_depths])


def _export_and_compare(job: tuple) -> tuple[str, float, float]:
    """Export one subnet and run it in onnxruntime at batch 1 and 8: (arch JSON, the export's
    own check, the worst difference at either batch size). Runs in a worker process."""
    name, x, seed, images, path = job
    torch.set_num_threads(1)  # two workers share the two cores
    arch = _parity_space(name).decode(np.asarray(x))
    model = _trained_like(supernets.build_static(arch, 10), seed)
    batch = resize_batch(torch.from_numpy(images), arch.resolution)
    checked = export_onnx(model, batch, path)
    session = onnx_session(path, threads=1)
    worst = 0.0
    for n in (1, 8):  # the batch dimension is dynamic
        (got,) = session.run(None, {"images": batch[:n].numpy()})
        with torch.no_grad():
            want = model(batch[:n]).numpy()
        assert got.shape == (n, 10)
        worst = max(worst, float(np.abs(got - want).max()))
    return arch.to_json(), checked, worst


@pytest.mark.slow
def test_onnxruntime_reproduces_torch_for_six_random_subnets_a_family(images, tmp_path):
    jobs = [
        (name, x, i, images.numpy(), tmp_path / f"{name}-{i}.onnx")
        for name in SPACES
        for i, x in enumerate(_parity_space(name).sample(6, np.random.default_rng(0)))
    ]
    results = map_in_two_processes(_export_and_compare, jobs)
    assert len(results) == 18
    for (name, *_), (arch, checked, worst) in zip(jobs, results, strict=True):
        assert checked <= ONNX_TOLERANCE and worst <= ONNX_TOLERANCE, (name, arch)
    assert {json.loads(arch)["family"] for arch, _, _ in results} == set(SPACES)


def test_a_mismatch_is_a_clear_error_and_writes_nothing(images, tmp_path, monkeypatch):
    space = search_spaces.get("resnet", resolutions=(16,))
    model = _trained_like(supernets.build_static(space.smallest(), 10), 0)

    def drifting(model_bytes, threads=None):  # onnxruntime off by 1e-3 on one logit
        session = onnx_session(model_bytes, threads)

        class Drifting:
            def run(self, names, feeds):
                (logits,) = session.run(names, feeds)
                logits[0, 0] += 1e-3
                return [logits]

        return Drifting()

    monkeypatch.setattr(deploy, "onnx_session", drifting)
    path = tmp_path / "model.onnx"
    with pytest.raises(OnnxMismatchError, match=r"differ from torch's by up to 0\.001"):
        export_onnx(model, images, path)
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="a batch"):
        export_onnx(model, images[0], path)
