"""Datasets by name or path, held in memory, with deterministic stratified splits.

A *source* is one of

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 images,
  10 classes, no download), upsampled to ``image_size`` and copied to 3 channels;
* a directory in ImageFolder layout (``root/<class>/<image>``), or a directory
  holding such a tree one level down, e.g. ``root/train/<class>/<image>`` (see
  :func:`_find_image_root` for the exact rule);
* a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of such a directory. It is unpacked
  once into the cache directory and then treated as a directory.

Every image is decoded once and kept in one ``uint8`` tensor ``[N, 3, S, S]`` plus
an ``int64`` label tensor. A CIFAR-sized dataset then takes ``N*3*S*S`` bytes of
memory (150 MB for 50,000 images at S = 32), and epochs do no JPEG decoding, which
would otherwise dominate epoch time on CPU. For directories and archives the
decoded tensors are also cached on disk, so later runs skip decoding.

The cache directory is ``cache_dir`` if given, else ``$NAT_CACHE_DIR``, else
``~/.cache/nat``.

Samples are normalised with a fixed mean 0.5 and standard deviation 0.5 per
channel: pixel values 0...255 map linearly to -1...1. Per-dataset statistics would
hardly change training of networks with BatchNorm, and would make the inputs
depend on the split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .sources import _MIN_IMAGE_SIZE, _load_digits, _load_path, _resolve_cache_dir, resize_batch

__all__ = [
    "DataSplits",
    "ImageTensorDataset",
    "class_numbers",
    "data_settings",
    "load_dataset",
    "load_from_settings",
    "make_loader",
    "resize_batch",
]


@dataclass
class DataSplits:
    """The train/val/test splits of one source, sharing one in-memory image tensor.

    Every dataset yields ``(image, label)``: ``image`` is a float32 tensor
    ``[3, S, S]`` normalised to -1...1, ``label`` an ``int`` in
    ``0 ... num_classes - 1``.

    Attributes:
        train: Training images with augmentation (random crop, and a random
            horizontal flip for sources where that keeps the class).
        train_eval: The same images as ``train``, in the same order, without
            augmentation, e.g. for BatchNorm recalibration or training accuracy.
        val: Validation images, no augmentation.
        test: Test images, no augmentation.
        num_classes: Number of classes.
        class_names: Class names; entry ``i`` names label ``i``.
        image_size: Side ``S`` of the square images, in pixels.
    """

    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    image_size: int

    def restricted(self, classes: Sequence[int]) -> DataSplits:
        """Every split kept to ``classes`` (label numbers), relabelled 0, 1, ... in that
        order. Each image stays in the split it was in, so a run on some classes never tests
        on images that a run on all of them trains on."""
        return DataSplits(
            *(getattr(self, name).restricted(classes) for name in _SPLITS),
            num_classes=len(classes),
            class_names=[self.class_names[c] for c in classes],
            image_size=self.image_size,
        )


_SPLITS = ("train", "train_eval", "val", "test")


def class_numbers(class_names: Sequence[str], chosen: Sequence[str | int]) -> list[int]:
    """The label numbers of ``chosen`` class names (or numbers), in their order. An unknown
    name, a number out of range or a repeat is a ValueError that lists the classes."""
    numbers = []
    for c in chosen:
        text = str(c)
        if text in class_names:
            numbers.append(class_names.index(text))
        elif text.isdigit() and int(text) < len(class_names):
            numbers.append(int(text))
        else:
            raise ValueError(
                f"unknown class {text!r}: the data has {len(class_names)} classes, "
                f"{', '.join(class_names)} (names, or numbers 0..{len(class_names) - 1})"
            )
    repeated = sorted({class_names[n] for n in numbers if numbers.count(n) > 1})
    if repeated:
        raise ValueError(f"classes given twice: {', '.join(repeated)}")
    return numbers


class ImageTensorDataset(Dataset):
    """A view of selected rows of an in-memory ``uint8`` image tensor.

    The datasets of one :class:`DataSplits` share the image tensor, no copies.
    Augmentation draws from torch's global random generator: call
    ``torch.manual_seed`` for reproducible augmentation (the sample order is seeded
    separately by :func:`make_loader`).

    Attributes:
        indices: int64 tensor ``[M]``, ascending row numbers into the full dataset
            of the source (numbered before any ``subset`` is taken).
        augment: Whether random crop (and flip, if ``hflip``) is applied.
        hflip: Whether augmentation includes a random horizontal flip; decided by
            the source (False for digits, True for image folders).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        augment: bool,
        hflip: bool,
    ) -> None:
        """Wrap rows ``indices`` of ``images`` (uint8 [N, 3, S, S]) and ``labels``."""
        self._images = images
        self._labels = labels
        self.indices = indices
        self.augment = augment
        self.hflip = hflip
        size = images.shape[-1]
        steps: list[v2.Transform] = [v2.RandomCrop(size, padding=size // 8)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        self._augmentation = v2.Compose(steps)

    def __len__(self) -> int:
        """Return the number of images in this split."""
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Return image ``i`` as normalised float32 ``[3, S, S]`` and its label."""
        row = int(self.indices[i])
        image = self._images[row]
        if self.augment:
            # Cropping the uint8 image is cheaper than the float one, and its zero
            # padding is black, as in the usual CIFAR recipe.
            image = self._augmentation(image)
        return _normalise(image), int(self._labels[row])

    @property
    def labels(self) -> torch.Tensor:
        """Return the int64 labels ``[M]`` of this split's images, in order."""
        return self._labels[self.indices]

    def restricted(self, classes: Sequence[int], keep_labels: bool = False) -> ImageTensorDataset:
        """The images whose label is in ``classes`` (no copy of the images), relabelled to
        their class's position in ``classes`` (``keep_labels``: labels unchanged)."""
        classes = torch.as_tensor(list(classes), dtype=torch.int64)
        mapping = torch.full((int(self._labels.max()) + 1,), -1, dtype=torch.int64)
        valid = (classes >= 0) & (classes < len(mapping))
        if not bool(valid.all()) or len(classes.unique()) != len(classes):
            raise ValueError(f"classes must be distinct labels, got {classes.tolist()}")
        mapping[classes] = classes if keep_labels else torch.arange(len(classes))
        # -1 marks rows not kept, here and in the labels of an earlier restriction
        labels = torch.where(self._labels >= 0, mapping[self._labels.clamp(min=0)], -1)
        rows = self.indices[labels[self.indices] >= 0]
        return ImageTensorDataset(self._images, labels, rows, self.augment, self.hflip)


def _normalise(image: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels 0...255 to float32 -1...1 (mean 0.5, std 0.5 per channel)."""
    return image.to(torch.float32).div_(127.5).sub_(1.0)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """Build a single-process DataLoader with a reproducible sample order.

    The data is already in memory, so worker processes would only add start-up
    cost. The loader owns a generator seeded with ``seed``: two loaders built with
    the same seed yield the same batches, and successive epochs of one loader are
    shuffled differently but reproducibly.

    Args:
        dataset: A map-style dataset, e.g. a split from :func:`load_dataset`.
        batch_size: Images per batch.
        shuffle: Whether to reshuffle the samples every epoch.
        seed: Seed of the shuffling generator.
        drop_last: Whether to drop a last batch smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=0,
        pin_memory=False,
        drop_last=drop_last,
        generator=generator,
    )


def load_dataset(
    source: str | os.PathLike[str],
    image_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    subset: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str | int] = (),
) -> DataSplits:
    """Load a dataset into memory and split it deterministically.

    Args:
        source: ``"digits"``, an ImageFolder directory, or a ``.tar.gz``, ``.tgz``
            or ``.tar`` archive of one (see the module docstring). ``"digits"``
            always means the bundled dataset; write ``"./digits"`` for a directory.
        image_size: Side ``S`` of the square images, in pixels, at least 8. Other
            sizes are resized to ``S x S`` bilinearly, ignoring the aspect ratio.
        seed: Seed of the subset choice and the split; the same seed gives the
            same split on any machine.
        val_fraction: Fraction of each class's images that goes to ``val``, in
            (0, 1).
        test_fraction: Fraction of each class's images that goes to ``test``, in
            (0, 1).
        subset: If given, first keep a stratified subset of this many images in
            total, spread over the classes as evenly as their sizes allow.
        cache_dir: Where archives are unpacked and decoded images are cached;
            defaults to ``$NAT_CACHE_DIR``, else ``~/.cache/nat``.
        classes: If given, keep only these classes (names or label numbers), relabelled
            0, 1, ... in this order, after the split of all classes (and after
            ``subset``, which counts images of every class): each image is in the split
            it would be in without ``classes``.

    Returns:
        The splits. Per class of ``n`` images (after ``subset``),
        ``round(val_fraction * n)`` go to val, ``round(test_fraction * n)`` to
        test (halves rounded up) and the rest to train.

    Raises:
        FileNotFoundError: ``source`` is neither ``"digits"`` nor an existing path.
        ValueError: Bad arguments; a source without at least 2 non-empty class
            folders; an unreadable archive or image; or a split that would leave a
            class without training images or the val or test split empty.
    """
    _check_split_arguments(image_size, val_fraction, test_fraction, subset)
    if isinstance(source, str) and source == "digits":
        images, labels, class_names = _load_digits(image_size)
        hflip = False  # Digits are not mirror-symmetric: a flipped 2 is no 2.
    else:
        cache = _resolve_cache_dir(cache_dir)
        images, labels, class_names = _load_path(source, image_size, cache)
        hflip = True  # Photos keep their class under a left-right flip.
    train_idx, val_idx, test_idx = _stratified_split(
        labels.numpy(), class_names, seed, val_fraction, test_fraction, subset
    )

    def view(indices: np.ndarray, augment: bool) -> ImageTensorDataset:
        rows = torch.from_numpy(indices)
        return ImageTensorDataset(images, labels, rows, augment=augment, hflip=hflip)

    splits = DataSplits(
        train=view(train_idx, augment=True),
        train_eval=view(train_idx, augment=False),
        val=view(val_idx, augment=False),
        test=view(test_idx, augment=False),
        num_classes=len(class_names),
        class_names=list(class_names),
        image_size=image_size,
    )
    return splits.restricted(class_numbers(class_names, classes)) if classes else splits


def _check_split_arguments(
    image_size: int, val_fraction: float, test_fraction: float, subset: int | None
) -> None:
    """Reject bad arguments before any (possibly slow) loading starts."""
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {_MIN_IMAGE_SIZE} pixels, got {image_size}; "
            "smaller images leave no room for crop augmentation and network strides"
        )
    for name, value in (
        ("val_fraction", val_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    total = val_fraction + test_fraction
    if total >= 1.0:
        raise ValueError(
            "val_fraction + test_fraction must be below 1 to leave training images, "
            f"got {val_fraction} + {test_fraction} = {total}"
        )
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive image count or None, got {subset}")


def _stratified_split(
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
        keep = _balanced_quota(counts, subset)
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


def _balanced_quota(counts: np.ndarray, total: int) -> np.ndarray:
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


def data_settings(
    source: str | os.PathLike[str],
    image_size: int,
    seed: int = 0,
    subset: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    classes: Sequence[str] = (),
) -> dict:
    """The arguments of :func:`load_dataset` as a JSON-able record (paths made absolute), so
    that checkpoints and run folders can reload exactly the same splits."""
    source = str(source)
    if source != "digits" and Path(source).exists():
        source = str(Path(source).resolve())
    return {
        "source": source,
        "image_size": image_size,
        "seed": seed,
        "subset": subset,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    } | ({"classes": list(classes)} if classes else {})  # older records stay as they were


def load_from_settings(
    settings: dict, cache_dir: str | os.PathLike[str] | None = None
) -> DataSplits:
    """Load the splits that a :func:`data_settings` record describes."""
    return load_dataset(
        settings["source"],
        image_size=settings["image_size"],
        seed=settings.get("seed", 0),
        subset=settings.get("subset"),
        val_fraction=settings.get("val_fraction", 0.1),
        test_fraction=settings.get("test_fraction", 0.1),
        cache_dir=cache_dir or settings.get("cache_dir"),
        classes=settings.get("classes", ()),
    )
