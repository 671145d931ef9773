"""A network as a chain of units (stem, each block, head), each described by a row of integers.

A unit's row fixes everything its run time depends on (channels, kernel, expansion, stride,
input side), so a latency table keyed on rows predicts any subnet as the sum over its units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .arch import STEM_STRIDES, ArchArrays
from .counting import out_size

if TYPE_CHECKING:
    from .base import SearchSpace

__all__ = [
    "BLOCK",
    "FIRST_BLOCK",
    "HEAD",
    "STEM",
    "UNIT_FIELDS",
    "covering_population",
    "units_of_arrays",
]

UNIT_FIELDS = ("kind", "c_in", "c_out", "kernel", "expand_pct", "stride", "size", "classes")
STEM, FIRST_BLOCK, BLOCK, HEAD = 0, 1, 2, 3  # kinds; a stage's first block may downsample


def units_of_arrays(
    arrays: ArchArrays, num_classes: int, stem_pool: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, active): rows (n, U, 8) int64 in :data:`UNIT_FIELDS` order and active (n, U) bool,
    U = 2 + every block slot. ``size`` is the unit's input side in px; ``expand_pct`` the
    expand ratio in percent; ``stem_pool``: the family's ImageNet stem ends with a max-pool."""
    a, n = arrays, arrays.n
    zeros = np.zeros(n, dtype=np.int64)

    def row(kind, c_in, c_out, kernel, expand, stride, size, classes=0):
        cols = [kind, c_in, c_out, kernel, np.rint(np.asarray(expand) * 100), stride, size, classes]
        return np.stack([np.broadcast_to(np.asarray(c, dtype=np.int64), (n,)) for c in cols], 1)

    stride = STEM_STRIDES[a.stem]
    rows = [row(STEM, 3, a.stem_channels, 0, 1, stride, a.resolution)]
    active = [np.ones(n, dtype=bool)]
    size = out_size(a.resolution, stride)
    if a.stem == "imagenet" and stem_pool:
        size = out_size(size, 2)
    c_in = a.stem_channels
    for s in range(len(a.strides)):
        c_out = a.channels[:, s]
        for j in range(a.kernel.shape[2]):
            first = j == 0
            step = a.strides[s] if first else 1
            kind = FIRST_BLOCK if first else BLOCK
            rows.append(
                row(
                    kind,
                    c_in if first else c_out,
                    c_out,
                    a.kernel[:, s, j],
                    a.expand[:, s, j],
                    step,
                    size,
                )
            )
            active.append(j < a.depth[:, s])
            if first:
                size = out_size(size, step)
        c_in = c_out
    rows.append(row(HEAD, c_in, a.head_channels, 0, 1, 1, size, num_classes + zeros))
    active.append(np.ones(n, dtype=bool))
    return np.stack(rows, axis=1), np.stack(active, axis=1)


def covering_population(space: SearchSpace) -> np.ndarray:
    """Encodings whose units, together, include every unit of every subnet of the space.

    A unit depends on its own choices, its stage's width and the previous stage's, and the
    resolution; depth only adds copies of a stage's later block, and kernels and expand
    ratios of different slots never interact. So: every stage at its deepest, one kernel
    and one expand ratio everywhere, and every resolution and width pair of adjacent
    stages."""
    n_width = space._width.stop - space._width.start
    n_expand = len(space.expand_ratios) if space.expand_ratios is not None else 1
    if n_width == 1:
        widths = [np.array([w]) for w in range(len(space.width_mults))]
    else:
        widths = []
        for a in range(len(space.width_mults)):
            for b in range(len(space.width_mults)):
                for s in range(n_width):
                    w = np.full(n_width, a)
                    w[s] = b
                    widths.append(w)
    rows = []
    for r in range(len(space.resolutions)):
        for w in widths:
            for k in range(len(space.kernel_sizes)):
                for e in range(n_expand):
                    x = space.upper.copy()
                    x[0], x[space._width], x[space._kernel] = r, w, k
                    if space.expand_ratios is not None:
                        x[space._expand] = e
                    rows.append(x)
    return np.unique(space.repair(np.array(rows)), axis=0)
