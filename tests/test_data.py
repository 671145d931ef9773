"""Tests for nat.data: sources, caching, deterministic splits, augmentation, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import nat.data
import nat.data.sources
from nat.data import (
    DataSplits,
    ImageTensorDataset,
    load_dataset,
    make_loader,
    resize_batch,
)


# The shared CIFAR-10 archive lives next to the project, not in it: a fresh clone
# has no copy, so the test that needs it skips.
def _splits_of(splits: DataSplits) -> dict[str, ImageTensorDataset]:
    parts = {
        "train": splits.train,
        "train_eval": splits.train_eval,
        "val": splits.val,
        "test": splits.test,
    }
    for part in parts.values():
        assert isinstance(part, ImageTensorDataset)
    return parts  # type: ignore[return-value]


def _crops(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """All crops of a normalised image padded with black (-1), the crop's fill."""
    size = image.shape[-1]
    padded = F.pad(image, (pad, pad, pad, pad), value=-1.0)
    return [
        padded[:, y : y + size, x : x + size]
        for y in range(2 * pad + 1)
        for x in range(2 * pad + 1)
    ]


def _matches_any(image: torch.Tensor, candidates: list[torch.Tensor]) -> bool:
    return any(torch.equal(image, c) for c in candidates)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", image_size=16)


# --- digits -------------------------------------------------------------------


def test_digits_split_sizes_add_up(digits: DataSplits) -> None:
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.train_eval) == len(digits.train)
    assert digits.num_classes == 10
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.image_size == 16


def test_digits_splits_are_disjoint_and_cover_everything(digits: DataSplits) -> None:
    parts = _splits_of(digits)
    train, val, test = (set(parts[k].indices.tolist()) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(1797))
    assert torch.equal(parts["train"].indices, parts["train_eval"].indices)


@pytest.mark.parametrize("size", [8, 20])
def test_digits_image_shapes_and_labels(size: int) -> None:
    splits = load_dataset("digits", image_size=size)
    for part in _splits_of(splits).values():
        image, label = part[0]
        assert image.shape == (3, size, size)
        assert image.dtype == torch.float32
        assert isinstance(label, int)
        assert -1.0 <= image.min() and image.max() <= 1.0
        # Grayscale replicated to 3 channels.
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        labels = part.labels
        assert labels.dtype == torch.int64
        assert 0 <= int(labels.min()) and int(labels.max()) <= 9


def test_digits_without_resize_keep_the_original_pixels() -> None:
    from sklearn.datasets import load_digits

    original = load_digits()
    splits = load_dataset("digits", image_size=8)
    image, label = splits.val[0]
    row = int(splits.val.indices[0])
    expected = torch.from_numpy(original.images[row] / 16.0).float()
    assert label == int(original.target[row])
    # uint8 storage rounds to 1/255 steps; the normalised range is 2 wide.
    assert torch.allclose((image[0] + 1.0) / 2.0, expected, atol=1 / 255)


def test_split_is_deterministic_for_a_seed() -> None:
    first = _splits_of(load_dataset("digits", image_size=8, seed=7))
    again = _splits_of(load_dataset("digits", image_size=8, seed=7))
    other = _splits_of(load_dataset("digits", image_size=8, seed=8))
    for name in ("train", "val", "test"):
        assert torch.equal(first[name].indices, again[name].indices)
        assert torch.equal(first[name].labels, again[name].labels)
        assert not torch.equal(first[name].indices, other[name].indices)
        assert len(first[name]) == len(other[name])


def test_split_indices_are_stable_across_versions_and_machines() -> None:
    # numpy's PCG64 stream is platform independent, so these are fixed for good;
    # a change here silently changes every benchmark split, so it must be deliberate.
    splits = load_dataset("digits", image_size=8, seed=0)
    assert splits.val.indices[:8].tolist() == [14, 17, 19, 23, 24, 48, 61, 77]
    assert splits.test.indices[:8].tolist() == [5, 9, 12, 16, 34, 38, 46, 51]


def test_split_is_stratified(digits: DataSplits) -> None:
    all_labels = torch.cat([digits.train.labels, digits.val.labels, digits.test.labels])
    counts = torch.bincount(all_labels, minlength=10)
    for part in (digits.train, digits.val, digits.test):
        assert set(part.labels.tolist()) == set(range(10))
    val_counts = torch.bincount(digits.val.labels, minlength=10)
    test_counts = torch.bincount(digits.test.labels, minlength=10)
    for c in range(10):
        expected = int(np.floor(0.1 * int(counts[c]) + 0.5))
        assert int(val_counts[c]) == expected
        assert int(test_counts[c]) == expected


def test_subset_is_stratified_and_deterministic() -> None:
    splits = load_dataset("digits", image_size=8, subset=200, val_fraction=0.2)
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert len(labels) == 200
    assert torch.bincount(labels).tolist() == [20] * 10
    assert torch.bincount(splits.val.labels).tolist() == [4] * 10
    again = load_dataset("digits", image_size=8, subset=200, val_fraction=0.2)
    assert torch.equal(splits.train.indices, again.train.indices)


def test_subset_balances_uneven_classes() -> None:
    # Class 0 has only 2 images: it gives both, the others share the rest evenly,
    # and leftover single images go to the lowest class indices.
    quota = nat.data.balanced_quota(np.array([2, 10, 10, 10]), total=13)
    assert quota.tolist() == [2, 4, 4, 3]
    assert nat.data.balanced_quota(np.array([5, 5]), total=10).tolist() == [5, 5]


def test_train_augmentation_varies_but_evaluation_images_do_not(
    digits: DataSplits,
) -> None:
    torch.manual_seed(0)
    reads = [digits.train[3][0] for _ in range(12)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])
    assert torch.equal(digits.val[3][0], digits.val[3][0])
    assert torch.equal(digits.test[3][0], digits.test[3][0])
    assert torch.equal(digits.train_eval[3][0], digits.train_eval[3][0])
    assert digits.train[3][1] == digits.train_eval[3][1]
    # Augmented images are crops of the unaugmented one (black padding).
    crops = _crops(digits.train_eval[3][0], pad=16 // 8)
    assert all(_matches_any(r, crops) for r in reads)


def test_digits_are_never_flipped(digits: DataSplits) -> None:
    assert digits.train.hflip is False
    plain = digits.train_eval[0][0]
    crops = _crops(plain, pad=2)
    flipped = _crops(plain.flip(-1), pad=2)
    assert not _matches_any(plain.flip(-1), crops)  # The digit is not symmetric.
    torch.manual_seed(0)
    for _ in range(60):
        image = digits.train[0][0]
        assert _matches_any(image, crops)
        assert not _matches_any(image, flipped)


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "message"),
    [
        (0.0, 0.1, "val_fraction: must be strictly between 0 and 1"),
        (1.0, 0.1, "val_fraction: must be strictly between 0 and 1"),
        (0.1, -0.2, "test_fraction: must be strictly between 0 and 1"),
        (0.1, 1.5, "test_fraction: must be strictly between 0 and 1"),
        (0.5, 0.5, "val_fraction: with test_fraction it must leave training images"),
        (0.6, 0.7, "val_fraction: with test_fraction it must leave training images"),
    ],
)
def test_bad_fractions(val_fraction: float, test_fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", val_fraction=val_fraction, test_fraction=test_fraction)


def test_bad_arguments_fail_before_loading(tmp_path: Path) -> None:
    # The path does not exist, yet the argument error comes first: no slow load.
    with pytest.raises(ValueError, match="image_size must be at least 8"):
        load_dataset(tmp_path / "missing.tar.gz", image_size=7)


def test_image_size_too_small() -> None:
    with pytest.raises(ValueError, match="image_size must be at least 8"):
        load_dataset("digits", image_size=4)


def test_subset_out_of_range() -> None:
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        load_dataset("digits", image_size=8, subset=9)
    with pytest.raises(ValueError, match="larger than the dataset"):
        load_dataset("digits", image_size=8, subset=1798)
    with pytest.raises(ValueError, match="subset must be a positive"):
        load_dataset("digits", image_size=8, subset=0)


def test_split_leaving_a_class_without_training_images() -> None:
    # 2 images per class: round(0.6) = 1 to val, 1 to test, none left to train.
    with pytest.raises(ValueError, match="class '0' would have 0 training images"):
        load_dataset("digits", image_size=8, subset=20, val_fraction=0.3, test_fraction=0.3)


def test_split_leaving_val_empty() -> None:
    with pytest.raises(ValueError, match="val split would be empty"):
        load_dataset("digits", image_size=8, subset=10)


# --- resize_batch and make_loader ------------------------------------------------


def test_resize_batch_shapes() -> None:
    batch = torch.rand(2, 3, 16, 16)
    assert resize_batch(batch, 24).shape == (2, 3, 24, 24)
    assert resize_batch(batch, 8).shape == (2, 3, 8, 8)
    assert resize_batch(torch.rand(1, 3, 10, 20), 12).shape == (1, 3, 12, 12)


def test_resize_batch_returns_same_size_unchanged() -> None:
    batch = torch.rand(2, 3, 16, 16)
    assert resize_batch(batch, 16) is batch


def test_resize_batch_antialiases_when_shrinking() -> None:
    batch = torch.rand(2, 3, 32, 32)
    expected = F.interpolate(
        batch, size=(8, 8), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.allclose(resize_batch(batch, 8), expected)


def test_resize_batch_rejects_unbatched_images() -> None:
    with pytest.raises(ValueError, match="NCHW"):
        resize_batch(torch.rand(3, 16, 16), 8)


def _loader_order(seed: int, shuffle: bool = True) -> list[int]:
    dataset = TensorDataset(torch.arange(50))
    loader = make_loader(dataset, batch_size=8, shuffle=shuffle, seed=seed)
    return [int(i) for (batch,) in loader for i in batch]


def test_make_loader_is_reproducible() -> None:
    first = _loader_order(seed=3)
    torch.manual_seed(12345)  # The global generator must not matter.
    assert _loader_order(seed=3) == first
    assert _loader_order(seed=4) != first
    assert sorted(first) == list(range(50))
    assert _loader_order(seed=3, shuffle=False) == list(range(50))


def test_make_loader_batches(digits: DataSplits) -> None:
    loader = make_loader(digits.val, batch_size=64, shuffle=False, drop_last=True)
    assert loader.num_workers == 0
    batches = list(loader)
    assert len(batches) == len(digits.val) // 64
    images, labels = batches[0]
    assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    epochs = make_loader(digits.train, batch_size=32, shuffle=True, seed=1)
    first_epoch = [labels.tolist() for _, labels in epochs]
    second_epoch = [labels.tolist() for _, labels in epochs]
    assert first_epoch != second_epoch  # Reshuffled every epoch.


def test_a_run_on_some_classes_keeps_each_image_in_its_split_and_relabels_in_order():
    from nat.prepare import load_data
    from nat.spec import RunSpec

    full = load_data(RunSpec.from_options(data="digits", seed=0))
    some = load_data(RunSpec.from_options(data="digits", seed=0, classes=["7", "3"]))
    assert some.num_classes == 2 and some.class_names == ["7", "3"]
    for name in ("train", "val", "test"):
        whole, part = getattr(full, name), getattr(some, name)
        kept = (whole.labels == 7) | (whole.labels == 3)
        assert torch.equal(part.indices, whole.indices[kept])  # same images, same split
        assert torch.equal(part.labels, (whole.labels[kept] == 3).long())  # 7 -> 0, 3 -> 1
    with pytest.raises(ValueError, match="unknown class 'cat'.*names, or numbers 0..9"):
        load_dataset("digits", 8, classes=["3", "cat"])
    with pytest.raises(ValueError, match="classes given twice: 3"):
        load_dataset("digits", 8, classes=["3", "3"])
