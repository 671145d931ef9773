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

Training images get a random crop (and flip); :meth:`ImageTensorDataset.with_policy`
adds TrivialAugment, RandAugment or AutoAugment and random erasing, and
:func:`batch_mixing` gives MixUp / CutMix for the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .sources import load_digits, load_path, resize_batch, resolve_cache_dir
from .splits import balanced_quota as balanced_quota  # re-exported for callers and tests
from .splits import check_split_arguments, stratified_split

__all__ = [
    "AUGMENT_POLICIES",
    "DataSplits",
    "ImageTensorDataset",
    "batch_mixing",
    "class_numbers",
    "data_settings",
    "load_dataset",
    "load_from_settings",
    "make_loader",
    "resize_batch",
]

# The names ImageTensorDataset.with_policy accepts, "none" first (the default); defined with
# the recipe that chooses one, which must not import torch.
from ..recipes import AUGMENT_POLICIES


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
    # Flags and JSON lists lose a folder name's outer spaces: such a name is matched without
    # them (when that is unambiguous), and listed quoted so that the spaces show.
    trimmed = [name.strip() for name in class_names]
    for c in chosen:
        text = str(c)
        if text in class_names:
            numbers.append(class_names.index(text))
        elif trimmed.count(text.strip()) == 1:
            numbers.append(trimmed.index(text.strip()))
        elif text.isdigit() and int(text) < len(class_names):
            numbers.append(int(text))
        else:
            shown = ", ".join(n if n == n.strip() else repr(n) for n in class_names)
            raise ValueError(
                f"unknown class {text!r}: the data has {len(class_names)} classes, "
                f"{shown} (names, or numbers 0..{len(class_names) - 1})"
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
        policy: Extra augmentation policy after crop and flip, one of
            :data:`AUGMENT_POLICIES` (see :meth:`with_policy`); ``"none"`` by default.
        erasing: Probability of random erasing after normalisation; 0.0 by default.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        augment: bool,
        hflip: bool,
        *,
        policy: str = "none",
        erasing: float = 0.0,
    ) -> None:
        """Wrap rows ``indices`` of ``images`` (uint8 [N, 3, S, S]) and ``labels``.

        ``policy`` and ``erasing`` only act when ``augment`` is True; see
        :meth:`with_policy`, which also explains the ValueError for bad values.
        """
        self._images = images
        self._labels = labels
        self.indices = indices
        self.augment = augment
        self.hflip = hflip
        self.policy = policy
        self.erasing = float(erasing)
        size = images.shape[-1]
        steps: list[v2.Transform] = [v2.RandomCrop(size, padding=size // 8)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps.extend(_policy_steps(policy))
        self._augmentation = v2.Compose(steps)
        if not 0.0 <= self.erasing <= 1.0:
            raise ValueError(f"erasing must be a probability in [0, 1], got {erasing}")
        # value=0 is mid-grey after normalisation, the mean pixel, as in torchvision's
        # reference recipes; erasing acts on the float image, so it comes after _normalise.
        self._erasing = v2.RandomErasing(p=self.erasing, value=0) if self.erasing > 0 else None

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
        image = _normalise(image)
        if self.augment and self._erasing is not None:
            image = self._erasing(image)
        return image, int(self._labels[row])

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
        return ImageTensorDataset(
            self._images,
            labels,
            rows,
            self.augment,
            self.hflip,
            policy=self.policy,
            erasing=self.erasing,
        )

    def with_policy(self, policy: str = "none", erasing: float = 0.0) -> ImageTensorDataset:
        """The same images, indices and labels (no copy) with another augmentation policy.

        With ``augment`` True a sample gets the random crop (and flip), then ``policy`` on
        the uint8 image, then normalisation, then, if ``erasing`` > 0, a
        ``v2.RandomErasing(p=erasing, value=0)``. Stronger augmentation regularises longer
        trainings of larger networks; short proxy trainings usually do better without it,
        hence the default ``"none"``. With ``augment`` False (``train_eval``, ``val``,
        ``test``) nothing changes: evaluation images are never augmented.

        Args:
            policy: ``"none"`` (crop and flip only), ``"trivial"``
                (``v2.TrivialAugmentWide()``), ``"randaugment"`` (``v2.RandAugment()``)
                or ``"autoaugment"`` (``v2.AutoAugment`` with the CIFAR-10 policy).
            erasing: Probability in [0, 1] of erasing a random rectangle of an image.

        Raises:
            ValueError: An unknown ``policy`` (the message lists :data:`AUGMENT_POLICIES`)
                or ``erasing`` outside [0, 1].
        """
        return ImageTensorDataset(
            self._images,
            self._labels,
            self.indices,
            self.augment,
            self.hflip,
            policy=policy,
            erasing=erasing,
        )


def _policy_steps(policy: str) -> list[v2.Transform]:
    """The transforms of an augmentation ``policy`` (see ImageTensorDataset.with_policy)."""
    if policy == "none":
        return []
    if policy == "trivial":
        return [v2.TrivialAugmentWide()]
    if policy == "randaugment":
        return [v2.RandAugment()]
    if policy == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)]
    raise ValueError(
        f"unknown augmentation policy {policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}"
    )


def batch_mixing(
    num_classes: int, mixup: float, cutmix: float
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """A batch transform that mixes images and their labels (MixUp and/or CutMix).

    MixUp blends two images and CutMix pastes a rectangle of one into another; either way
    the target becomes a mix of both one-hot labels, weighted by a Beta(alpha, alpha)
    draw. Both work on whole batches (each image is mixed with another of its batch), so
    they act in the training loop, not in the dataset. Train against the soft targets
    with ``cross_entropy(logits, targets)``, which accepts class probabilities.

    Randomness comes from torch's global generator, like the rest of the augmentation:
    ``torch.manual_seed`` makes the mixing reproducible.

    Args:
        num_classes: Number of classes, the width of the soft targets.
        mixup: Alpha of ``v2.MixUp``; 0 disables it.
        cutmix: Alpha of ``v2.CutMix``; 0 disables it.

    Returns:
        None if both alphas are 0 (nothing to do). Otherwise a callable taking a float
        image batch ``[N, 3, S, S]`` and int64 labels ``[N]`` and returning the mixed
        images and float soft targets ``[N, num_classes]`` (rows sum to 1). With both
        alphas > 0, each batch gets one of the two, chosen with equal probability
        (``v2.RandomChoice``, as in torchvision's reference training scripts).

    Raises:
        ValueError: A negative alpha, or ``num_classes`` below 1.
    """
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    choices: list[v2.Transform] = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def mix(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch: ``(images [N, 3, S, S], labels [N])`` to (images, soft targets)."""
        mixed, targets = transform(images, labels)
        return mixed, targets

    return mix


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
    check_split_arguments(image_size, val_fraction, test_fraction, subset)
    if isinstance(source, str) and source == "digits":
        images, labels, class_names = load_digits(image_size)
        hflip = False  # Digits are not mirror-symmetric: a flipped 2 is no 2.
    else:
        cache = resolve_cache_dir(cache_dir)
        images, labels, class_names = load_path(source, image_size, cache)
        hflip = True  # Photos keep their class under a left-right flip.
    train_idx, val_idx, test_idx = stratified_split(
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
