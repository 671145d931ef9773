"""Deterministic stratified train/val/test splits of a labelled image set (see
:func:`nat.data.load_dataset` for the rules): pure functions of the labels and a seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..fields import check_fractions
from .sources import MIN_IMAGE_SIZE


def check_split_arguments(
    image_size: int, val_fraction: float, test_fraction: float, subset: int | None
) -> None:
    """Reject bad arguments before any (possibly slow) loading starts."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}; "
            "smaller images leave no room for crop augmentation and network strides"
        )
    check_fractions(val_fraction, test_fraction)
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive image count or None, got {subset}")


def stratified_split(
    labels: np.ndarray,
    class_names: Sequence[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    subset: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the ascending int64 row indices of the train, val and test splits.

    Each class's rows are shuffled by one ``numpy.random.default_rng(seed)`` stream
    (PCG64, identical on every platform); ``subset`` keeps a prefix of each class's
    order, of which the first rows go to val, the next to test, the rest to train.
    """
    num_classes = len(class_names)
    counts = np.bincount(labels, minlength=num_classes)
    if subset is None:
        keep = counts
    elif subset < num_classes:
        raise ValueError(
            f"subset={subset} is smaller than the number of classes ({num_classes}); "
            "give at least one image per class"
        )
    elif subset > len(labels):
        raise ValueError(
            f"subset={subset} is larger than the dataset ({len(labels)} images); "
            "use a smaller subset, or subset=None for all images"
        )
    else:
        keep = balanced_quota(counts, subset)
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))[: keep[c]]
        n_val = _round_half_up(val_fraction * len(rows))
        n_test = _round_half_up(test_fraction * len(rows))
        if len(rows) - n_val - n_test < 1:
            raise ValueError(
                f"class {class_names[c]!r} would have 0 training images "
                f"({len(rows)} images: {n_val} to val, {n_test} to test); lower "
                "val_fraction/test_fraction or use a larger subset"
            )
        val.append(rows[:n_val])
        test.append(rows[n_val : n_val + n_test])
        train.append(rows[n_val + n_test :])
    train_idx, val_idx, test_idx = (
        np.sort(np.concatenate(parts)).astype(np.int64) for parts in (train, val, test)
    )
    for name, rows in (("val", val_idx), ("test", test_idx)):
        if len(rows) == 0:
            # An empty evaluation split would only surface later as NaN accuracy.
            raise ValueError(
                f"the {name} split would be empty; raise {name}_fraction or use a larger subset"
            )
    return train_idx, val_idx, test_idx


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (built-in round() goes to even)."""
    return int(np.floor(x + 0.5))


def balanced_quota(counts: np.ndarray, total: int) -> np.ndarray:
    """Spread ``total`` images over classes as evenly as class sizes allow.

    Classes too small for an equal share give all their images and the shortfall
    goes to the others; single leftover images go to the lowest class indices
    that still have room. Returns the number of images to keep per class.
    """
    quota = np.zeros_like(counts)
    remaining = total
    open_classes = [c for c in range(len(counts)) if counts[c] > 0]
    while remaining > 0 and open_classes:
        share = remaining // len(open_classes)
        if share == 0:
            for c in open_classes[:remaining]:
                quota[c] += 1
            break
        for c in open_classes:
            take = min(share, counts[c] - quota[c])
            quota[c] += take
            remaining -= take
        open_classes = [c for c in open_classes if quota[c] < counts[c]]
    return quota
