"""A network as a chain of units (stem, each block, head), each described by a row of integers.

A unit's row fixes everything its run time depends on (channels, kernel, expansion, stride,
input side), so a latency table keyed on rows predicts any subnet as the sum over its units.
"""

from __future__ import annotations

import numpy as np

from .arch import STEM_STRIDES, ArchArrays
from .counting import out_size

__all__ = ["BLOCK", "FIRST_BLOCK", "HEAD", "STEM", "UNIT_FIELDS", "units_of_arrays"]

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
