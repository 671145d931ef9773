"""Analytic parameter and multiply-accumulate counts of the layers every family is built
from; they work element-wise on arrays, so a whole population is counted at once."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["conv", "head", "linear", "out_size"]


def out_size(size: np.ndarray | int, stride: np.ndarray | int) -> np.ndarray:
    """Spatial side after a 'same'-padded convolution or pooling of the given stride."""
    return (np.asarray(size) + stride - 1) // stride


def conv(c_in: Any, c_out: Any, kernel: Any, size_out: Any, depthwise: bool = False):
    """(parameters, MACs) of a bias-free convolution followed by BatchNorm (2 parameters per
    channel). ``size_out`` is the output side in pixels; depthwise means groups = c_in."""
    weights = c_out * kernel * kernel * (1 if depthwise else c_in)
    return weights + 2 * c_out, weights * size_out * size_out


def linear(c_in: Any, c_out: int):
    """(parameters, MACs) of a linear layer with bias."""
    return c_in * c_out + c_out, c_in * c_out


def head(params, macs, c_in, head_channels, size, num_classes):
    """Optional 1x1 convolution to ``head_channels``, global pooling, linear classifier."""
    p_conv, m_conv = conv(c_in, head_channels, 1, size)
    has_conv = head_channels > 0
    p_fc, m_fc = linear(np.where(has_conv, head_channels, c_in), num_classes)
    return params + has_conv * p_conv + p_fc, macs + has_conv * m_conv + m_fc
