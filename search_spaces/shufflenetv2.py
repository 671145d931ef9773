"""ShuffleNetV2 units (Ma et al., ECCV 2018).

Searchable: input resolution, a width multiplier per stage, the number of units of each
stage, and the depthwise kernel size of each unit (both depthwise convolutions of a
down-sampling unit use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .arch import STEM_STRIDES, ArchArrays, make_divisible
from .base import SearchSpace, register
from .counting import Tally, out_size

__all__ = ["ShuffleNetV2Space"]

STEM_CHANNELS, HEAD_CHANNELS = 24, 1024
STAGE_CHANNELS = (116, 232, 464)
MAX_DEPTHS = (4, 8, 4)
STAGE_STRIDES = (2, 2, 2)


@register("shufflenetv2")
class ShuffleNetV2Space(SearchSpace):
    """ShuffleNetV2 space. Options: ``resolutions`` (px), ``width_mults`` (choices of each
    stage's multiplier), ``depths`` (units per stage), ``kernel_sizes``, ``stem``."""

    family = "shufflenetv2"

    def __init__(
        self,
        *,
        resolutions: Sequence[int] = (24, 28, 32, 36, 40),
        width_mults: Sequence[float] = (0.5, 1.0, 1.5),
        depths: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[int] = (3, 5, 7),
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
        n = len(resolution)
        return ArchArrays(
            family=self.family,
            stem=self.stem,
            resolution=resolution,
            stem_channels=np.full(n, STEM_CHANNELS, dtype=np.int64),
            channels=make_divisible(widths * np.asarray(STAGE_CHANNELS)),
            strides=np.array(STAGE_STRIDES),
            depth=depth,
            kernel=kernel,
            expand=expand,
            head_channels=np.full(n, HEAD_CHANNELS, dtype=np.int64),
        )

    @staticmethod
    def costs_of_arrays(arrays: ArchArrays, num_classes: int) -> Tally:
        a, tally = arrays, Tally(arrays.n)
        imagenet = a.stem == "imagenet"
        size = out_size(a.resolution, STEM_STRIDES[a.stem])
        tally.conv(True, 3, a.stem_channels, 3, a.resolution, size)
        if imagenet:  # max-pool
            pooled = out_size(size, 2)
            tally.op(True, a.stem_channels * (size * size + pooled * pooled))
            size = pooled
        c_in = a.stem_channels
        for s in range(len(a.strides)):
            c_out = a.channels[:, s]
            branch = c_out // 2
            for j in range(a.kernel.shape[2]):
                active = j < a.depth[:, s]
                k = a.kernel[:, s, j]
                size_out = out_size(size, a.strides[s]) if j == 0 else size
                half_out = branch * size_out * size_out
                if j == 0:  # down-sampling unit: both branches see the whole input
                    x = c_in * size * size
                    # The left branch runs first; the input waits for the right one.
                    tally.conv(active, c_in, c_in, k, size, size_out, depthwise=True)
                    tally.conv(active, c_in, branch, 1, size_out, size_out, alive=x)
                    tally.conv(active, c_in, branch, 1, size, size, alive=half_out)
                    kept = half_out  # the left branch's output, until the concatenation
                else:  # split: half the channels pass through untouched
                    kept = branch * size * size
                    tally.op(active, c_out * size * size + 2 * kept)
                    tally.conv(active, branch, branch, 1, size, size, alive=kept)
                tally.conv(active, branch, branch, k, size, size_out, True, alive=kept)
                tally.conv(active, branch, branch, 1, size_out, size_out, alive=kept)
                # Concatenation, then the shuffle's transpose (its reshapes are views).
                tally.op(active, 4 * half_out)
                tally.op(active, 4 * half_out)
                size = size_out
            c_in = c_out
            # The shuffle's two reshapes store their target shapes (5 and 4 int64), one pair
            # a stage: every unit of a stage has the same shape.
            tally.constant_bytes = tally.constant_bytes + (5 + 4) * 8
        tally.head(c_in, a.head_channels, size, num_classes)
        return tally
