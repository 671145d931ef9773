"""Analytic costs of a population of architectures, counted op by op along the forward pass.

Each family walks its network once, in the order the exported graph runs it, and tells a
:class:`Tally` about every operation: a convolution (with its BatchNorm and activation), an
addition, a pooling, a concatenation. The tally keeps parameters, MACs, the weights and bias
channels a deployed model stores, and the largest working set: the elements of every tensor
alive while one operation runs (its inputs, its output, and tensors kept for later, such as a
residual branch's input). Everything is element-wise over arrays, so a whole population is
counted at once.

Deployed models fold each BatchNorm into its convolution (one bias per channel) and fuse the
activation into it (it runs in place), as ONNX export and onnxruntime do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COST_METRICS", "ELEMENT_BYTES", "PRECISIONS", "Tally", "out_size"]

# What a budget can bound, analytically: parameters, MACs per image, peak activation bytes
# and model bytes (the last two at a precision).
COST_METRICS = ("params", "macs", "peak_memory", "model_size")
PRECISIONS = ("fp32", "int8")
ELEMENT_BYTES = {"fp32": 4, "int8": 1}
# Bytes an int8 model stores per output channel of a convolution or linear layer, as
# onnxruntime's QDQ format with per-channel weights writes them: the weight's scale (float32)
# and zero point (int8), the bias (int32), and the bias's own scale (float32) and zero
# point (int32).
INT8_CHANNEL_BYTES = 4 + 1 + 4 + 4 + 4
# Bytes an int8 model stores per quantised activation tensor: a scale and a zero point.
INT8_TENSOR_BYTES = 4 + 1


def out_size(size: np.ndarray | int, stride: np.ndarray | int) -> np.ndarray:
    """Spatial side after a 'same'-padded convolution or pooling of the given stride."""
    return (np.asarray(size) + stride - 1) // stride


class Tally:
    """Costs of ``n`` forward passes (one image each), accumulated op by op.

    ``active`` arguments are (n,) bools (or one bool): whether the op exists in each network.
    Sizes are sides in pixels; every count is an int64 array of shape (n,).
    """

    def __init__(self, n: int) -> None:
        zeros = np.zeros(n, dtype=np.int64)
        self.params = zeros.copy()  # BatchNorm counted unfolded (2 per channel), as torch does
        self.macs = zeros.copy()
        self.weights = zeros.copy()  # convolution and linear weights, bias excluded
        self.channels = zeros.copy()  # output channels of convolutions and linear layers
        self.tensors = zeros.copy()  # activation tensors the ops write
        self.peak = zeros.copy()  # elements alive at once, at the busiest op
        # Other stored constants: int64 shapes and axes at any precision, and float scalars
        # (ReLU6's bounds) that int8 quantisation folds away.
        self.constant_bytes = zeros.copy()
        self.float_constant_bytes = zeros.copy()

    def op(self, active: Any, working_set: Any) -> None:
        """An op that writes one tensor while ``working_set`` elements are alive."""
        active = np.asarray(active, dtype=bool)
        self.tensors = self.tensors + active
        self.peak = np.maximum(self.peak, np.where(active, working_set, 0))

    def conv(
        self,
        active: Any,
        c_in: Any,
        c_out: Any,
        kernel: Any,
        size_in: Any,
        size_out: Any,
        depthwise: bool = False,
        alive: Any = 0,
    ) -> None:
        """A bias-free convolution followed by BatchNorm (groups = c_in when ``depthwise``);
        ``alive``: elements of other tensors kept while it runs."""
        active = np.asarray(active, dtype=bool)
        weights = c_out * kernel * kernel * (1 if depthwise else c_in)
        self.weights = self.weights + active * weights
        self.channels = self.channels + active * c_out
        self.params = self.params + active * (weights + 2 * c_out)
        self.macs = self.macs + active * weights * size_out * size_out
        self.op(active, c_in * size_in * size_in + c_out * size_out * size_out + alive)

    def head(self, c_in: Any, head_channels: Any, size: Any, num_classes: int) -> None:
        """Optional 1x1 convolution to ``head_channels``, global pooling, linear classifier."""
        has_conv = head_channels > 0
        self.conv(has_conv, c_in, head_channels, 1, size, size)
        pooled = np.where(has_conv, head_channels, c_in)
        self.op(True, pooled * size * size + pooled)
        self.constant_bytes = self.constant_bytes + 2 * 8  # the pooling's two axes
        self.weights = self.weights + pooled * num_classes
        self.channels = self.channels + num_classes
        self.params = self.params + pooled * num_classes + num_classes
        self.macs = self.macs + pooled * num_classes
        self.op(True, pooled + num_classes)

    def metric(self, name: str, precision: str = "fp32") -> np.ndarray:
        """One of :data:`COST_METRICS` by name (bytes at ``precision`` for the memories)."""
        if name == "peak_memory":
            return self.peak_memory(precision)
        if name == "model_size":
            return self.model_size(precision)
        if name in ("params", "macs"):
            return getattr(self, name)
        raise ValueError(f"unknown cost metric {name!r}: choose one of {COST_METRICS}")

    def peak_memory(self, precision: str = "fp32") -> np.ndarray:
        """Bytes of activations alive at once at the busiest op (MCUNet's peak SRAM), the
        input image included, at ``precision``'s element size."""
        return self.peak * ELEMENT_BYTES[_checked(precision)]

    def model_size(self, precision: str = "fp32") -> np.ndarray:
        """Bytes of the deployed model's weights: at fp32, weights and one folded bias per
        channel; at int8, a byte per weight plus the per-channel and per-tensor quantisation
        parameters onnxruntime stores."""
        if _checked(precision) == "fp32":
            return (
                4 * (self.weights + self.channels) + self.constant_bytes + self.float_constant_bytes
            )
        tensors = self.tensors + 1  # the input image is quantised too
        return (
            self.weights
            + INT8_CHANNEL_BYTES * self.channels
            + INT8_TENSOR_BYTES * tensors
            + self.constant_bytes
        )


def _checked(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {PRECISIONS}")
    return precision
