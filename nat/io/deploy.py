"""ONNX export of a static subnet, checked against torch with onnxruntime on the CPU.

The file is made with ``torch.onnx.export``'s dynamo path, checked with ``onnx.checker`` and run
by onnxruntime on a batch of real images before it is written: a file that exists computes
what the torch model computes. Input ``images``: float32 ``[N, 3, R, R]``, RGB, pixels scaled
to -1..1 (``(p / 255 - 0.5) / 0.5``), R the architecture's resolution; output ``logits``
``[N, classes]`` in the order of the run's ``class_names`` (a multi-exit model: one output
per exit, ``logits_0`` first, the network's own classifier last).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .files import atomic_write

__all__ = [
    "INPUT_FORMAT",
    "ONNX_TOLERANCE",
    "OnnxMismatchError",
    "OnnxModel",
    "export_int8",
    "export_onnx",
    "onnx_session",
    "sample_images",
]

# What every exported model takes, as written in its config.json.
INPUT_FORMAT = "RGB, resolution x resolution px, pixels scaled to -1..1"

# Largest |logit difference| accepted between onnxruntime and torch, per unit of the largest
# |logit| when that exceeds 1 (float32 on a CPU: the two differ by summation order only, a
# relative 1e-6 or so; a trained net's logits reach 10-30, so an absolute bound would not do).
ONNX_TOLERANCE = 1e-4


class OnnxMismatchError(ValueError):
    """onnxruntime does not reproduce the torch model's logits."""


def onnx_session(model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session of an ONNX file or its bytes; ``threads``: intra-op threads
    (None: onnxruntime's default, every core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def sample_images(split: Dataset, n: int = 16) -> torch.Tensor:
    """The first ``n`` images of ``split`` as a batch: real inputs to check an export on."""
    return torch.stack([split[i][0] for i in range(min(n, len(split)))])


def export_onnx(
    model: nn.Module, images: torch.Tensor, path: str | os.PathLike, atol: float = ONNX_TOLERANCE
) -> float:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX with a dynamic batch size, after
    checking it; returns the largest |logit difference| against torch on ``images`` (a batch
    at the model's input size). One output ``logits``, or for a model returning a tuple of
    logits (a multi-exit network) ``logits_0``, ``logits_1``, ... in its order.

    Raises :class:`OnnxMismatchError` when onnxruntime's logits differ by more than ``atol``
    times the largest |logit| (at least 1); nothing is written then.
    """
    import onnx

    model = model.cpu().eval()
    images = images.detach().float().cpu().contiguous()
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"images must be a batch [N >= 2, 3, R, R], got {tuple(images.shape)}")
    with torch.no_grad():
        outputs = model(images)
    several = isinstance(outputs, (tuple, list))
    expected = [o.numpy() for o in outputs] if several else [outputs.numpy()]
    names = ["logits"] if len(expected) == 1 else [f"logits_{k}" for k in range(len(expected))]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            model,
            (images[:2],),
            dynamo=True,
            input_names=["images"],
            output_names=names,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    data = program.model_proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    got = onnx_session(data).run(None, {"images": images.numpy()})
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    allowed = atol * max(1.0, *(float(np.max(np.abs(e))) for e in expected))
    if not diff <= allowed:
        raise OnnxMismatchError(
            f"onnxruntime's logits differ from torch's by up to {diff:.3g} (tolerance "
            f"{allowed:.3g}) "
            f"on {len(images)} images: {Path(path).name} was not written. Report the "
            "architecture; meanwhile use weights.pt with torch"
        )
    atomic_write(path, lambda f: f.write(data))
    return diff


class OnnxModel(nn.Module):
    """An ONNX model run by onnxruntime on the CPU, as a torch module for inference: what
    ``nat.training.train.evaluate`` scores (give it ``device=torch.device("cpu")``)."""

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        super().__init__()
        self.session = onnx_session(model, threads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feed = {"images": images.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def export_int8(
    float_model: str | os.PathLike, calibration: torch.Tensor, path: str | os.PathLike
) -> bytes:
    """Write the int8 version of the float ONNX file ``float_model`` to ``path`` (static
    post-training quantisation, see :func:`nat.io.footprint.quantize_int8`), its activation
    ranges calibrated on ``calibration``: training images at the model's input size, in
    batches of 32. Returns the file's bytes."""
    import onnx

    from .footprint import quantize_int8

    batches = [b.float().cpu().numpy() for b in calibration.split(32)]
    data = quantize_int8(Path(float_model).read_bytes(), batches)
    onnx.checker.check_model(onnx.load_from_string(data))
    atomic_write(path, lambda f: f.write(data))
    return data
