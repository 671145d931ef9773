"""Where images come from: scikit-learn's digits, ImageFolder directories and tar archives,
decoded once into uint8 tensors and cached on disk (see :mod:`nat.data` for the rules)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

from ..io.files import atomic_write

logger = logging.getLogger("nat.data")

# Bump when the content of decoded-tensor cache files changes: it is part of their
# hash, so files written by older code are simply no longer found.
_CACHE_FORMAT_VERSION = 2  # 2: 16-bit images scaled, not saturated
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_SPLIT_DIR_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
MIN_IMAGE_SIZE = 8
_SOURCE_HINT = "give 'digits', an ImageFolder directory or a .tar.gz of one"
_LAYOUT_HINT = "expected ImageFolder layout <root>/<class name>/<image file>"
# What a corrupt decoded-tensor cache file makes torch.load or our checks raise.
_CACHE_READ_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ValueError,
)

_Decoded = tuple[torch.Tensor, torch.Tensor, list[str]]


def resize_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize an NCHW batch to ``resolution x resolution`` pixels, bilinearly.

    Antialiasing is used when shrinking, so downsampled images do not alias. A
    batch that already has that size is returned unchanged (same object, no copy).

    Args:
        images: Float tensor ``[N, C, H, W]``.
        resolution: Target side length, in pixels.

    Returns:
        Tensor ``[N, C, resolution, resolution]`` of the same dtype.
    """
    if images.ndim != 4:
        raise ValueError(
            "resize_batch expects an NCHW batch with 4 dimensions, got shape "
            f"{tuple(images.shape)}; add a batch dimension with images.unsqueeze(0)"
        )
    if resolution < 1:
        raise ValueError(f"resolution must be at least 1 pixel, got {resolution}")
    height, width = images.shape[-2:]
    if height == resolution and width == resolution:
        return images
    shrinking = resolution < height or resolution < width
    return torch.nn.functional.interpolate(
        images,
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=shrinking,
    )


def load_digits(image_size: int) -> _Decoded:
    """Return scikit-learn's digits as uint8 [1797, 3, S, S], labels, class names."""
    # Imported here because no other source needs scikit-learn.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixels are 0...16: counts of set pixels in 4x4 blocks of the original scans.
    gray = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    gray = resize_batch(gray, image_size).clamp_(0.0, 1.0)
    images = (gray * 255.0).round_().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels, [str(name) for name in digits.target_names]


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``cache_dir``, else ``$NAT_CACHE_DIR``, else ``~/.cache/nat``."""
    if cache_dir is None:
        cache_dir = os.environ.get("NAT_CACHE_DIR") or Path.home() / ".cache" / "nat"
    return Path(cache_dir).expanduser()


def _safe_name(name: str) -> str:
    """Return ``name`` reduced to characters that are safe in any file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "data"


def _archive_stem(path: Path) -> str:
    """Return the archive's file name without its archive suffix."""
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return _safe_name(name[: -len(suffix)])
    return _safe_name(name)


def load_path(source: str | os.PathLike[str], image_size: int, cache_dir: Path) -> _Decoded:
    """Load a directory or archive source, from the decoded-tensor cache if there."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Dataset source {str(source)!r} not found: {_SOURCE_HINT}")
    path = path.resolve()
    if path.is_dir():
        root = _find_image_root(path)
        folder = _image_folder(root, described_as=f"directory {str(path)!r}")
        # A directory's own mtime misses edits further down, so the cache key
        # covers the name, size and mtime of every image file.
        prefix = len(str(root)) + 1  # Paths are keyed relative to the root.
        stats = ((p, os.stat(p)) for p, _ in folder.samples)
        listing = "\n".join(f"{p[prefix:]}\t{st.st_size}\t{st.st_mtime_ns}" for p, st in stats)
        key = f"dir\n{root}\n{image_size}\n{listing}"
        cache_file = _tensor_cache_file(cache_dir, root.name, image_size, key)
        cached = _read_tensor_cache(cache_file, image_size)
        if cached is not None:
            return cached
        decoded = _decode_folder(folder, image_size)
    elif path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        st = path.stat()
        key = f"archive\n{path}\n{st.st_size}\n{st.st_mtime_ns}\n{image_size}"
        stem = _archive_stem(path)
        cache_file = _tensor_cache_file(cache_dir, stem, image_size, key)
        # Checked before unpacking: a hit needs neither the unpacked tree nor time.
        cached = _read_tensor_cache(cache_file, image_size)
        if cached is not None:
            return cached
        root = _find_image_root(_unpack_archive(path, cache_dir))
        folder = _image_folder(root, described_as=f"archive {str(path)!r}")
        decoded = _decode_folder(folder, image_size)
    else:
        raise ValueError(
            f"Dataset source {str(path)!r} is a file but not a .tar.gz, .tgz or .tar "
            f"archive: {_SOURCE_HINT}"
        )
    _write_tensor_cache(cache_file, *decoded)
    return decoded


def _visible_subdirs(directory: Path) -> list[Path]:
    """Return sorted subdirectories, without hidden ones and macOS ``__MACOSX``."""
    return sorted(
        entry
        for entry in directory.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX"
    )


def _find_image_root(directory: Path) -> Path:
    """Descend from ``directory`` to the folder whose subfolders are the classes.

    Descends into ``train/`` if the other subfolders are only split names (``val``,
    ``valid``, ``validation``, ``test``), because this engine carves its own val
    and test splits out of the training images. Also descends through a single
    subfolder that has subfolders itself (an archive holding ``cifar10/<class>/``),
    because a dataset with one class is never usable anyway.
    """
    while True:
        subdirs = _visible_subdirs(directory)
        names = {d.name for d in subdirs}
        train = directory / "train"
        if "train" in names and names <= _SPLIT_DIR_NAMES and _visible_subdirs(train):
            directory = train
        elif len(subdirs) == 1 and _visible_subdirs(subdirs[0]):
            directory = subdirs[0]
        else:
            return directory


class _VisibleImageFolder(ImageFolder):
    """ImageFolder that ignores hidden folders (``.ipynb_checkpoints``) as classes, and
    reaches each folder and image once however symlinks join them."""

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        """Return the visible subfolder names and their label numbers."""
        classes = [d.name for d in _visible_subdirs(Path(directory))]
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, **_):
        """(image path, label) pairs. Symlinked folders are followed (a class may live on
        other storage), but never into a folder already walked: a loop (``a/loop -> .``) or a
        link into another class would count the same images again, and copies of one image
        in training and test score it on what it learned."""
        valid = is_valid_file or (lambda path: path.lower().endswith(extensions))
        roots = {name: os.path.join(directory, name) for name in sorted(class_to_idx)}
        walked = {os.path.realpath(path) for path in roots.values()}
        seen: dict[str, str] = {}
        samples = []
        for name, root in roots.items():
            for folder, subdirs, files in os.walk(root, followlinks=True):
                subdirs.sort()
                keep = []
                for sub in subdirs:
                    real = os.path.realpath(os.path.join(folder, sub))
                    if real not in walked:
                        walked.add(real)
                        keep.append(sub)
                subdirs[:] = keep
                for file in sorted(files):
                    path = os.path.join(folder, file)
                    if not valid(path):
                        continue
                    real = os.path.realpath(path)
                    if real in seen:
                        raise ValueError(
                            f"image {seen[real]!r} is reached again as {path!r} (a symlink?): "
                            "the same image twice would be counted twice and could land in "
                            "both training and test; remove one of them"
                        )
                    seen[real] = path
                    samples.append((path, class_to_idx[name]))
        return samples


def _image_folder(root: Path, described_as: str) -> ImageFolder:
    """Index the image files under ``root``, with clear errors for bad layouts."""
    classes = [d.name for d in _visible_subdirs(root)]
    if not classes:
        raise ValueError(f"{described_as} has no class folders under {str(root)!r}; {_LAYOUT_HINT}")
    if len(classes) < 2:
        raise ValueError(
            f"{described_as} has only 1 class folder ({classes[0]!r}) under "
            f"{str(root)!r}, need at least 2 classes; {_LAYOUT_HINT}"
        )
    folder = _VisibleImageFolder(str(root), allow_empty=True)
    counts = np.bincount([label for _, label in folder.samples], minlength=len(classes))
    empty = [name for name, n in zip(folder.classes, counts, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"{described_as}: class folders {empty} under {str(root)!r} contain no "
            "image files (.jpg, .png, ...); add images or remove those folders"
        )
    return folder


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit greyscale (PNG, TIFF) is scaled to 8 bits: Pillow's own
    conversion clips it, so that a mid-grey 16-bit image would come out white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.int64)
        # A 32-bit "I" image holding 8-bit values is left as it is.
        if img.mode != "I" or wide.max(initial=0) > 255:
            wide = (wide + 128) // 257
        return Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _decode_folder(folder: ImageFolder, image_size: int) -> _Decoded:
    """Decode every image of ``folder`` once, to RGB uint8 ``[N, 3, S, S]``."""
    size = (image_size, image_size)
    out = np.empty((len(folder.samples), image_size, image_size, 3), dtype=np.uint8)
    for i, (file, _) in enumerate(folder.samples):
        try:
            with Image.open(file) as img:
                # Lets the JPEG decoder shrink large images by 2-8x while decoding,
                # which is much faster; it never goes below the requested size.
                img.draft("RGB", size)
                rgb = _to_rgb(img)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(
                f"cannot decode image file {file!r} ({err}); delete or replace it"
            ) from err
        if rgb.size != size:
            # Pillow's bilinear filter widens when shrinking, i.e. it antialiases.
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        out[i] = np.asarray(rgb)
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.int64)
    return images, labels, list(folder.classes)


def _unpack_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack ``archive`` into ``cache_dir`` unless done before; return the folder.

    The folder name includes the archive's size and mtime, so a changed archive is
    unpacked afresh. Unpacking goes into a temporary sibling that is renamed into
    place when complete, so an interrupted run never leaves a half-written folder
    that later runs would take for a finished one.
    """
    st = archive.stat()
    target = cache_dir / f"{_archive_stem(archive)}-{st.st_size}-{st.st_mtime_ns}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=cache_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # "data" refuses absolute paths, links leaving the tree, devices.
                tar.extractall(tmp, filter="data")
        except tarfile.FilterError as err:  # a member aimed outside the tree: refused, not read
            raise ValueError(
                f"archive {str(archive)!r} was refused: {err}; an archive of images needs no "
                "links or paths outside its own folder, re-create it without them"
            ) from err
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise ValueError(
                f"cannot read archive {str(archive)!r} ({err}): it is corrupt, "
                "truncated or not a tar archive; re-create or re-copy it"
            ) from err
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process may have finished unpacking the same archive first.
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tensor_cache_file(cache_dir: Path, stem: str, image_size: int, key: str) -> Path:
    """Return the decoded-tensor cache file: readable name plus a hash of ``key``."""
    text = f"v{_CACHE_FORMAT_VERSION}\n{key}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return cache_dir / f"decoded-{_safe_name(stem)}-{image_size}px-{digest}.pt"


def _read_tensor_cache(cache_file: Path, image_size: int) -> _Decoded | None:
    """Return the cached ``(images, labels, class_names)``, or None if unusable.

    A corrupt or inconsistent file (say from a crash of an older version, or disk
    trouble) is deleted so that the caller rebuilds it, rather than failing on it
    in every later run.
    """
    if not cache_file.is_file():
        return None
    try:
        data = torch.load(cache_file, map_location="cpu", weights_only=True)
        images, labels = data["images"], data["labels"]
        class_names = data["class_names"]
        valid = (
            data.get("version") == _CACHE_FORMAT_VERSION
            and images.dtype == torch.uint8
            and tuple(images.shape[1:]) == (3, image_size, image_size)
            and labels.dtype == torch.int64
            and labels.shape == (images.shape[0],)
            and isinstance(class_names, list)
            and all(isinstance(name, str) for name in class_names)
            and len(labels) > 0
            and int(labels.min()) >= 0
            and int(labels.max()) < len(class_names)
        )
        if not valid:
            raise ValueError("unexpected contents")
    except _CACHE_READ_ERRORS as err:
        logger.warning(
            "Rebuilding unusable dataset cache file %s (%s: %s)",
            cache_file,
            type(err).__name__,
            err,
        )
        # If it cannot be removed, the rebuilt file atomically replaces it anyway.
        with contextlib.suppress(OSError):
            cache_file.unlink(missing_ok=True)
        return None
    return images, labels, class_names


def _write_tensor_cache(
    cache_file: Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> None:
    """Write the decoded tensors atomically; failure only costs a later re-decode.

    The file is written under a temporary name in the same directory, flushed to
    disk and then renamed over ``cache_file``, so readers see either no file or a
    complete one, even after a crash or power loss.
    """
    payload = {
        "version": _CACHE_FORMAT_VERSION,
        "images": images,
        "labels": labels,
        "class_names": list(class_names),
    }
    try:
        atomic_write(cache_file, lambda f: torch.save(payload, f))
    except OSError as err:
        # E.g. a read-only cache directory or a full disk: the data is decoded, so carry on.
        logger.warning("Cannot write dataset cache %s (%s)", cache_file, err)
