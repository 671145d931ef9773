"""Measured parameters and MACs of a real forward pass, to check the analytic counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["profile"]


def profile(model: nn.Module, input_size: int | tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs per image) of ``model``.

    MACs are half the FLOPs that torch's ``FlopCounterMode`` counts on one forward pass of a
    single image: convolutions and matrix products only, which is how torchvision counts
    its published GFLOPS. ``input_size`` is the image side in px, or a full (C, H, W) shape.
    """
    shape = (3, input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_size must be a side in px or (C, H, W), got {input_size!r}")
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return params, counter.get_total_flops() // 2
