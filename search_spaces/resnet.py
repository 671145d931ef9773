"""ResNet-18 basic blocks (He et al., CVPR 2016).

Searchable: input resolution, a width multiplier per stage, the depth of each stage, and the
kernel size of each block (both of its convolutions). The stem has the first stage's width,
so the first stage never needs a projection shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .arch import STEM_STRIDES, ArchArrays, make_divisible
from .base import SearchSpace, register
from .counting import Tally, out_size

__all__ = ["ResNetSpace"]

STAGE_CHANNELS = (64, 128, 256, 512)
MAX_DEPTHS = (2, 2, 2, 2)
STAGE_STRIDES = (1, 2, 2, 2)


@register("resnet")
class ResNetSpace(SearchSpace):
    """Basic-block ResNet space. Options: ``resolutions`` (px), ``width_mults`` (choices of
    each stage's multiplier), ``depths`` (choices per stage), ``kernel_sizes``, ``stem``."""

    family = "resnet"

    def __init__(
        self,
        *,
        resolutions: Sequence[int] = (24, 28, 32, 36, 40),
        width_mults: Sequence[float] = (0.5, 0.75, 1.0),
        depths: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[int] = (3, 5),
        stem: str = "small",
    ) -> None:
        super().__init__(
            max_depths=MAX_DEPTHS,
            resolutions=resolutions,
            width_mults=width_mults,
            width_per_stage=True,
            depths=depths,
            kernel_sizes=kernel_sizes,
            expand_ratios=None,
            stem=stem,
        )

    def _assemble(self, resolution, widths, depth, kernel, expand) -> ArchArrays:
        channels = make_divisible(widths * np.asarray(STAGE_CHANNELS))
        return ArchArrays(
            family=self.family,
            stem=self.stem,
            resolution=resolution,
            stem_channels=channels[:, 0].copy(),
            channels=channels,
            strides=np.array(STAGE_STRIDES),
            depth=depth,
            kernel=kernel,
            expand=expand,
            head_channels=np.zeros(len(resolution), dtype=np.int64),
        )

    @staticmethod
    def costs_of_arrays(arrays: ArchArrays, num_classes: int) -> Tally:
        a, tally = arrays, Tally(arrays.n)
        imagenet = a.stem == "imagenet"
        size = out_size(a.resolution, STEM_STRIDES[a.stem])
        tally.conv(True, 3, a.stem_channels, 7 if imagenet else 3, a.resolution, size)
        if imagenet:  # max-pool
            pooled = out_size(size, 2)
            tally.op(True, a.stem_channels * (size * size + pooled * pooled))
            size = pooled
        c_in = a.stem_channels
        for s in range(len(a.strides)):
            c_out = a.channels[:, s]
            for j in range(a.kernel.shape[2]):
                active = j < a.depth[:, s]
                block_in = c_in if j == 0 else c_out
                stride = a.strides[s] if j == 0 else 1
                size_out = out_size(size, stride)
                k = a.kernel[:, s, j]
                shortcut = (stride != 1) | (block_in != c_out)
                x, y = block_in * size * size, c_out * size_out * size_out
                # The block's input stays alive for the shortcut, which runs last.
                tally.conv(active, block_in, c_out, k, size, size_out)
                tally.conv(active, c_out, c_out, k, size_out, size_out, alive=x)
                tally.conv(active & shortcut, block_in, c_out, 1, size, size_out, alive=y)
                tally.op(active, 3 * y)  # the addition: both branches and the sum
                size = size_out
            c_in = c_out
        tally.head(c_in, a.head_channels, size, num_classes)
        return tally
