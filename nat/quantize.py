"""int8 versions of handed-back subnets, scored as they will run: with onnxruntime.

Static post-training quantisation of the exported ``model.onnx`` (onnxruntime's
``quantize_static``: QDQ format, symmetric per-channel int8 weights, uint8 activations whose
ranges come from training images), then the same validation and test images the float model
was scored on. The drop in points is what the user gives up for a quarter of the bytes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import resize_batch
from .io.deploy import OnnxModel, export_int8
from .io.footprint import initializer_bytes, peak_activation_bytes
from .training.train import evaluate

__all__ = ["INT8_CALIBRATION_IMAGES", "INT8_METHOD", "quantize_subnet"]

# Activation ranges from a few hundred images: enough to cover each class's range, and
# quantisation stays seconds long on a CPU.
INT8_CALIBRATION_IMAGES = 256
INT8_METHOD = (
    "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights, uint8 activations, "
    f"MinMax ranges from {INT8_CALIBRATION_IMAGES} training images"
)


def quantize_subnet(
    folder: Path,
    resolution: int,
    calibration: torch.Tensor,
    splits: dict[str, list],
    float_accuracy: dict[str, float | None],
) -> dict:
    """Write ``folder/model.int8.onnx`` from ``folder/model.onnx`` and score it.

    ``calibration``: training images (a batch at any size; resized here to ``resolution``
    px); ``splits``: name -> batches of (images, labels), e.g. ``{"val": ..., "test": ...}``;
    ``float_accuracy``: the float model's accuracy (0..1) on the same splits. Returns what
    config.json records under ``int8``: accuracy and drop against float (in points) per
    split, and the int8 file's measured bytes of weights and peak activation memory."""
    float_path, int8_path = folder / "model.onnx", folder / "model.int8.onnx"
    data = export_int8(float_path, resize_batch(calibration, resolution), int8_path)
    model = OnnxModel(data)
    info: dict = {"file": "model.int8.onnx", "method": INT8_METHOD}
    for split, batches in splits.items():
        accuracy = evaluate(model, batches, resolution, device=torch.device("cpu"))
        info[f"{split}_accuracy"] = accuracy
        if float_accuracy.get(split) is not None:
            info[f"{split}_drop_points"] = round(100 * (float_accuracy[split] - accuracy), 2)
    info["model_size_bytes"] = initializer_bytes(data)
    info["peak_memory_bytes"] = peak_activation_bytes(float_path.read_bytes(), 1)
    return info
