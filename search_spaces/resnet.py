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
from .counting import conv, head, out_size

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
    def complexity_of_arrays(arrays: ArchArrays, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        a = arrays
        imagenet = a.stem == "imagenet"
        size = out_size(a.resolution, STEM_STRIDES[a.stem])
        params, macs = conv(3, a.stem_channels, 7 if imagenet else 3, size)
        if imagenet:
            size = out_size(size, 2)  # max-pool
        c_in = a.stem_channels
        for s in range(len(a.strides)):
            c_out = a.channels[:, s]
            for j in range(a.kernel.shape[2]):
                active = j < a.depth[:, s]
                block_in = c_in if j == 0 else c_out
                stride = a.strides[s] if j == 0 else 1
                size_out = out_size(size, stride)
                k = a.kernel[:, s, j]
                p1, m1 = conv(block_in, c_out, k, size_out)
                p2, m2 = conv(c_out, c_out, k, size_out)
                p_sc, m_sc = conv(block_in, c_out, 1, size_out)
                shortcut = (stride != 1) | (block_in != c_out)
                params = params + active * (p1 + p2 + shortcut * p_sc)
                macs = macs + active * (m1 + m2 + shortcut * m_sc)
                size = size_out
            c_in = c_out
        return head(params, macs, c_in, a.head_channels, size, num_classes)
