"""Tests for the augmentation policies of nat.data (with_policy) and batch_mixing."""

from __future__ import annotations

import pytest
import torch

import nat.data
from nat.data import AUGMENT_POLICIES, DataSplits, ImageTensorDataset, batch_mixing, load_dataset


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", image_size=16)


def _train(splits: DataSplits) -> ImageTensorDataset:
    assert isinstance(splits.train, ImageTensorDataset)
    return splits.train


def _samples(dataset: ImageTensorDataset, count: int, seed: int) -> list[torch.Tensor]:
    """The first ``count`` images, each drawn right after ``torch.manual_seed(seed + i)``:
    crop and flip come first, so every policy sees the same crops as "none"."""
    images = []
    for i in range(count):
        torch.manual_seed(seed + i)
        images.append(dataset[i][0])
    return images


# --- with_policy --------------------------------------------------------------


def test_policies_are_exported() -> None:
    assert AUGMENT_POLICIES == ("none", "trivial", "randaugment", "autoaugment")
    assert "AUGMENT_POLICIES" in nat.data.__all__
    assert "batch_mixing" in nat.data.__all__


def test_default_policy_is_none(digits: DataSplits) -> None:
    train = _train(digits)
    assert train.policy == "none"
    assert train.erasing == 0.0


def test_with_policy_shares_images_and_indices(digits: DataSplits) -> None:
    train = _train(digits)
    view = train.with_policy("trivial", erasing=0.25)
    assert view is not train
    assert view._images.untyped_storage().data_ptr() == train._images.untyped_storage().data_ptr()
    assert torch.equal(view.indices, train.indices)
    assert torch.equal(view.labels, train.labels)
    assert (view.augment, view.hflip) == (train.augment, train.hflip)
    assert (view.policy, view.erasing) == ("trivial", 0.25)
    # the original is untouched
    assert (train.policy, train.erasing) == ("none", 0.0)


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_each_policy_yields_normalised_images(digits: DataSplits, policy: str) -> None:
    view = _train(digits).with_policy(policy, erasing=0.5)
    torch.manual_seed(0)
    for i in range(8):
        image, label = view[i]
        assert image.dtype == torch.float32
        assert image.shape == (3, 16, 16)
        assert float(image.min()) >= -1.0
        assert float(image.max()) <= 1.0
        assert label == int(view.labels[i])


def test_trivial_changes_images_relative_to_none(digits: DataSplits) -> None:
    train = _train(digits)
    plain = _samples(train.with_policy("none"), 20, seed=123)
    trivial = _samples(train.with_policy("trivial"), 20, seed=123)
    # Same seed, same crop draws: "none" is reproducible, "trivial" changes something.
    assert all(torch.equal(a, b) for a, b in zip(plain, _samples(train, 20, seed=123), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(plain, trivial, strict=True))


def test_erasing_zeroes_a_rectangle(digits: DataSplits) -> None:
    train = _train(digits)
    plain = _samples(train, 20, seed=7)
    erased = _samples(train.with_policy("none", erasing=1.0), 20, seed=7)
    found = 0
    for a, b in zip(plain, erased, strict=True):
        changed = (a != b).any(dim=0)
        # every pixel that changed is now exactly 0, and they lie in one rectangle
        assert bool((b[:, changed] == 0).all())
        if bool(changed.any()):
            found += 1
            rows = changed.any(dim=1).nonzero().flatten()
            cols = changed.any(dim=0).nonzero().flatten()
            box = b[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool((box == 0).all())
    # p=1 erases every image; one could only look unchanged if its rectangle was all 0
    assert found >= 15


def test_erasing_zero_changes_nothing(digits: DataSplits) -> None:
    train = _train(digits)
    plain = _samples(train, 10, seed=3)
    same = _samples(train.with_policy("none", erasing=0.0), 10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))


@pytest.mark.parametrize("split", ["val", "test", "train_eval"])
def test_unaugmented_splits_ignore_the_policy(digits: DataSplits, split: str) -> None:
    dataset = getattr(digits, split)
    assert isinstance(dataset, ImageTensorDataset)
    assert not dataset.augment
    view = dataset.with_policy("autoaugment", erasing=1.0)
    torch.manual_seed(0)
    for i in range(10):
        assert torch.equal(dataset[i][0], view[i][0])


def test_restricted_keeps_policy(digits: DataSplits) -> None:
    view = _train(digits).with_policy("randaugment", erasing=0.3)
    kept = view.restricted([3, 5])
    assert (kept.policy, kept.erasing) == ("randaugment", 0.3)
    assert set(kept.labels.tolist()) == {0, 1}
    again = kept.restricted([1])
    assert (again.policy, again.erasing) == ("randaugment", 0.3)
    # DataSplits.restricted goes through the same path
    splits = DataSplits(
        view,
        digits.train_eval,
        digits.val,
        digits.test,
        digits.num_classes,
        digits.class_names,
        digits.image_size,
    )
    assert _train(splits.restricted([0, 1])).policy == "randaugment"


def test_bad_policy_raises_with_choices(digits: DataSplits) -> None:
    with pytest.raises(ValueError) as error:
        _train(digits).with_policy("mixup")
    message = str(error.value)
    assert "'mixup'" in message
    for name in AUGMENT_POLICIES:
        assert name in message


@pytest.mark.parametrize("erasing", [-0.1, 1.5])
def test_bad_erasing_raises(digits: DataSplits, erasing: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _train(digits).with_policy("none", erasing=erasing)


def test_constructor_defaults_keep_old_callers_working() -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    dataset = ImageTensorDataset(images, labels, torch.arange(4), True, False)
    assert (dataset.policy, dataset.erasing) == ("none", 0.0)
    assert dataset[0][0].shape == (3, 8, 8)


# --- batch_mixing -------------------------------------------------------------


def _batch(n: int = 16, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 16, 16, generator=generator) * 2 - 1
    labels = torch.randint(0, classes, (n,), generator=generator)
    return images, labels


def test_batch_mixing_none_when_disabled() -> None:
    assert batch_mixing(10, 0.0, 0.0) is None


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_batch_mixing_soft_targets(mixup: float, cutmix: float) -> None:
    mix = batch_mixing(10, mixup, cutmix)
    assert mix is not None
    images, labels = _batch()
    torch.manual_seed(0)
    for _ in range(5):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape
        assert mixed.dtype == torch.float32
        assert targets.shape == (16, 10)
        assert targets.dtype.is_floating_point
        assert torch.allclose(targets.sum(dim=1), torch.ones(16))
        assert bool(((targets > 0).sum(dim=1) <= 2).all())
        assert bool((targets >= 0).all())
        # each row's own label keeps some weight
        assert bool((targets[torch.arange(16), labels] > 0).all())
    # the input batch is not modified in place
    assert torch.equal(images, _batch()[0])


def test_batch_mixing_is_seeded_by_torch() -> None:
    mix = batch_mixing(10, 0.4, 1.0)
    assert mix is not None
    images, labels = _batch()
    torch.manual_seed(11)
    first = mix(images, labels)
    torch.manual_seed(11)
    second = mix(images, labels)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


@pytest.mark.parametrize(("mixup", "cutmix"), [(-0.1, 0.0), (0.0, -1.0), (-1.0, 1.0)])
def test_batch_mixing_negative_alpha_raises(mixup: float, cutmix: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        batch_mixing(10, mixup, cutmix)
