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
from .counting import conv, head, out_size

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
    def complexity_of_arrays(arrays: ArchArrays, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        a = arrays
        imagenet = a.stem == "imagenet"
        size = out_size(a.resolution, STEM_STRIDES[a.stem])
        params, macs = conv(3, a.stem_channels, 3, size)
        if imagenet:
            size = out_size(size, 2)  # max-pool
        c_in = a.stem_channels
        for s in range(len(a.strides)):
            c_out = a.channels[:, s]
            branch = c_out // 2
            for j in range(a.kernel.shape[2]):
                active = j < a.depth[:, s]
                k = a.kernel[:, s, j]
                if j == 0:  # down-sampling unit: both branches see the whole input
                    size_out = out_size(size, a.strides[s])
                    parts = [
                        conv(c_in, c_in, k, size_out, depthwise=True),
                        conv(c_in, branch, 1, size_out),
                        conv(c_in, branch, 1, size),
                        conv(branch, branch, k, size_out, depthwise=True),
                        conv(branch, branch, 1, size_out),
                    ]
                else:  # half the channels pass through untouched
                    size_out = size
                    parts = [
                        conv(branch, branch, 1, size),
                        conv(branch, branch, k, size, depthwise=True),
                        conv(branch, branch, 1, size),
                    ]
                params = params + active * sum(p for p, _ in parts)
                macs = macs + active * sum(m for _, m in parts)
                size = size_out
            c_in = c_out
        return head(params, macs, c_in, a.head_channels, size, num_classes)
