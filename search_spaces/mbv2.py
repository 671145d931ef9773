"""MobileNetV2 macro-structure of MBConv blocks (Sandler et al., CVPR 2018).

Searchable: input resolution, one width multiplier, depth of each of the six stages after the
fixed first block, and per block the depthwise kernel size and the expand ratio.
The first block (expand 1, 16 channels) is kept fixed, as in OFA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .arch import STEM_STRIDES, ArchArrays, make_divisible
from .base import SearchSpace, register
from .counting import Tally, out_size

__all__ = ["MBv2Space"]

STEM_CHANNELS, FIRST_CHANNELS, HEAD_CHANNELS = 32, 16, 1280
STAGE_CHANNELS = (24, 32, 64, 96, 160, 320)
MAX_DEPTHS = (2, 3, 4, 3, 3, 1)
# The small stems keep the first stage at stride 1: total stride 8 for 32x32 inputs with the
# "small" stem, 16 with "stride2" (its stem has stride 2).
_SMALL_STAGE_STRIDES = (1, 2, 2, 1, 2, 1)
STAGE_STRIDES = {
    "imagenet": (2, 2, 2, 1, 2, 1),
    "small": _SMALL_STAGE_STRIDES,
    "stride2": _SMALL_STAGE_STRIDES,
}


@register("mbv2")
class MBv2Space(SearchSpace):
    """MBConv space. Options: ``resolutions`` (px), ``width_mults`` (one multiplier for all
    channels), ``depths`` (choices per stage), ``kernel_sizes``, ``expand_ratios``, ``stem``."""

    family = "mbv2"
    imagenet_stem_pool = False

    def __init__(
        self,
        *,
        resolutions: Sequence[int] = (24, 28, 32, 36, 40),
        width_mults: Sequence[float] = (0.5, 0.75, 1.0),
        depths: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        expand_ratios: Sequence[float] = (3, 4, 6),
        stem: str = "small",
    ) -> None:
        super().__init__(
            max_depths=MAX_DEPTHS,
            resolutions=resolutions,
            width_mults=width_mults,
            width_per_stage=False,
            depths=depths,
            kernel_sizes=kernel_sizes,
            expand_ratios=expand_ratios,
            stem=stem,
        )

    def _searchable_stages(self, arch):
        return arch.stages[1:]

    def _assemble(self, resolution, widths, depth, kernel, expand) -> ArchArrays:
        n, w = len(resolution), widths[:, 0]
        # The fixed first block becomes stage 0: depth 1, kernel 3, expand 1.
        first_kernel = np.zeros((n, 1, kernel.shape[2]), dtype=np.int64)
        first_kernel[:, 0, 0] = 3
        return ArchArrays(
            family=self.family,
            stem=self.stem,
            resolution=resolution,
            stem_channels=make_divisible(STEM_CHANNELS * w),
            channels=np.concatenate(
                [
                    make_divisible(FIRST_CHANNELS * w)[:, None],
                    make_divisible(np.outer(w, STAGE_CHANNELS)),
                ],
                axis=1,
            ),
            strides=np.array((1,) + STAGE_STRIDES[self.stem]),
            depth=np.concatenate([np.ones((n, 1), dtype=np.int64), depth], axis=1),
            kernel=np.concatenate([first_kernel, kernel], axis=1),
            expand=np.concatenate([np.ones((n, 1, kernel.shape[2])), expand], axis=1),
            head_channels=make_divisible(HEAD_CHANNELS * np.maximum(1.0, w)),
        )

    @staticmethod
    def costs_of_arrays(arrays: ArchArrays, num_classes: int) -> Tally:
        a, tally = arrays, Tally(arrays.n)
        size = out_size(a.resolution, STEM_STRIDES[a.stem])
        tally.conv(True, 3, a.stem_channels, 3, a.resolution, size)
        c_in = a.stem_channels
        for s in range(len(a.strides)):
            c_out = a.channels[:, s]
            for j in range(a.kernel.shape[2]):
                active = j < a.depth[:, s]
                block_in = c_in if j == 0 else c_out
                stride = a.strides[s] if j == 0 else 1
                size_out = out_size(size, stride)
                expand = a.expand[:, s, j]
                hidden = np.rint(block_in * expand).astype(np.int64)
                has_exp = expand != 1
                residual = (stride == 1) & (block_in == c_out)
                # A residual block keeps its input alive until the final addition.
                kept = residual * block_in * size * size
                tally.conv(active & has_exp, block_in, hidden, 1, size, size)
                tally.conv(
                    active,
                    hidden,
                    hidden,
                    a.kernel[:, s, j],
                    size,
                    size_out,
                    depthwise=True,
                    alive=has_exp * kept,  # without expansion the input is the conv's own
                )
                tally.conv(active, hidden, c_out, 1, size_out, size_out, alive=kept)
                tally.op(active & residual, 3 * c_out * size_out * size_out)
                size = size_out
            c_in = c_out
        tally.head(c_in, a.head_channels, size, num_classes)
        tally.float_constant_bytes = tally.float_constant_bytes + 2 * 4  # ReLU6's 0 and 6
        return tally
