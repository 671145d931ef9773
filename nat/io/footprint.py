"""What a deployed model occupies, measured on its ONNX file, and its int8 version.

Measured, not predicted: :func:`peak_activation_bytes` walks the graph's tensor lifetimes and
:func:`initializer_bytes` adds up the stored weights. They check the analytic counts of
``search_spaces.counting`` (which the search uses as budgets) on built models.

:func:`quantize_int8` is static post-training quantisation with onnxruntime: QDQ format,
uint8 activations and per-channel int8 weights, calibrated on real images.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "analytic_footprint",
    "initializer_bytes",
    "measured_footprint",
    "peak_activation_bytes",
    "quantize_int8",
]

# Ops whose output can take its input's buffer: element-wise activations run in place (they
# are fused into the convolution before them), and reshapes are views.
_IN_PLACE = {"Relu", "Clip", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"}


def _model(model):
    import onnx

    return onnx.load_from_string(model) if isinstance(model, bytes) else model


def initializer_bytes(model) -> int:
    """Bytes of every initializer (weights, biases, quantisation parameters, shape constants)
    of an ONNX model (a ``ModelProto`` or its bytes)."""
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in _model(model).graph.initializer)


def measured_footprint(fp32: bytes, int8: bytes) -> dict[str, int]:
    """Bytes measured on a float ONNX model and on its int8 version: peak activation memory at
    4 and 1 bytes an element (the float graph's tensor lifetimes, walked once: quantisation
    does not change them) and each file's initializers."""
    peak = peak_activation_bytes(fp32, 1)
    return {
        "peak fp32": 4 * peak,
        "peak int8": peak,
        "size fp32": initializer_bytes(fp32),
        "size int8": initializer_bytes(int8),
    }


def analytic_footprint(costs) -> dict[str, np.ndarray]:
    """The same bytes as :func:`measured_footprint`, counted analytically for every subnet of
    ``costs`` (``search_spaces`` costs of a population), one array each."""
    return {
        f"{kind} {precision}": np.asarray(getattr(costs, attr)(precision), dtype=float)
        for kind, attr in (("peak", "peak_memory"), ("size", "model_size"))
        for precision in ("fp32", "int8")
    }


def peak_activation_bytes(model, element_bytes: int) -> int:
    """The largest number of bytes of activation tensors alive at once while the nodes of an
    ONNX model (``ModelProto`` or bytes; float, not quantised) run in file order, at batch 1
    and ``element_bytes`` per element. A tensor is alive from the node that writes it to the
    last node that reads it; the input image counts from the start."""
    import onnx

    model = _model(model)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:  # batch 1 wherever the batch is symbolic
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(fixed).graph
    elements = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        elements[value.name] = int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in dims]))
    buffer_of: dict[str, str] = {}
    born: dict[str, int] = {}
    last: dict[str, int] = {}
    for value in graph.input:
        if value.name not in weights:
            buffer_of[value.name] = value.name
            born[value.name] = last[value.name] = -1
    for i, node in enumerate(graph.node):
        reads = [t for t in node.input if t in buffer_of]
        for name in reads:
            last[buffer_of[name]] = i
        if not reads:  # a constant, not an activation
            continue
        if node.op_type in _IN_PLACE:
            buffer_of[node.output[0]] = buffer_of[node.input[0]]
            continue
        for name in node.output:
            buffer_of[name] = name
            born[name] = last[name] = i
    for value in graph.output:
        last[buffer_of[value.name]] = len(graph.node)
    live = np.zeros(len(graph.node) + 2, dtype=np.int64)
    for name, start in born.items():  # +1: index -1 (the input) becomes 0
        live[start + 1 : last[name] + 2] += elements[name]
    return int(live.max()) * element_bytes


def quantize_int8(model: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """The int8 version of a float ONNX model (bytes, one input): onnxruntime's static
    quantisation in QDQ format, uint8 activations and symmetric per-channel int8 weights, with
    activation ranges from ``calibration`` (batches of float32 images as the model takes
    them). Fails with ValueError when ``calibration`` is empty.

    uint8 activations (U8S8), not int8: onnxruntime's x86 kernels fuse U8S8 QDQ convolutions
    into integer ones, but ran many int8 (S8S8) ones in float between Dequantize and Quantize
    nodes; on 3 random subnets a family here, int8 over fp32 batch-1 time went from 1.02 /
    0.85 / 1.74 (S8S8) to 0.83 / 0.31 / 1.06 (U8S8) for mbv2 / ResNet / ShuffleNetV2."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("int8 calibration needs at least one batch of images")

    name = _model(model).graph.input[0].name  # "images" in a run's exports

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        plain, prepared, quantized = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        plain.write_bytes(model)
        # Shape inference and graph clean-up first, as onnxruntime advises before quantising.
        quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return quantized.read_bytes()


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantiser logs advice on every call; keep the run's output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
