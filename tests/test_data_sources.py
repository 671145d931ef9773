"""Image sources: ImageFolder directories and archives, the decoded-tensor cache, and their
errors; CIFAR-10 from the shared archive when it is there."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import _crops, _matches_any, _splits_of

import nat.data.sources
from nat.data import load_dataset

CIFAR_ARCHIVE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
)

FOLDER_CLASSES = ["cat", "dog", "fox"]
IMAGES_PER_CLASS = 6
# Deliberately not square and not the target size, so every image gets resized.
FOLDER_IMAGE_SIZES = [(10, 12), (12, 10), (16, 16), (20, 14), (9, 9), (31, 17)]


def _make_image_folder(root: Path, per_class: int = IMAGES_PER_CLASS) -> Path:
    """Write a small ImageFolder of random images in assorted modes and formats."""
    rng = np.random.default_rng(123)
    for c, name in enumerate(FOLDER_CLASSES):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            width, height = FOLDER_IMAGE_SIZES[j % len(FOLDER_IMAGE_SIZES)]
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels, mode="RGB")
            if j == 1:  # Grayscale and RGBA files must come out as RGB too.
                image.convert("L").save(root / name / f"{c}_{j}.png")
            elif j == 2:
                image.convert("RGBA").save(root / name / f"{c}_{j}.png")
            elif j == 3:
                image.save(root / name / f"{c}_{j}.jpg", quality=90)
            elif j == 4:
                image.convert("L").save(root / name / f"{c}_{j}.jpg")
            else:
                image.save(root / name / f"{c}_{j}.png")
    return root


def _make_archive(archive: Path, tree: Path, arcname: str = "train") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=arcname)
    return archive


def _decoded_cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("decoded-*.pt"))


# --- image folders and archives -------------------------------------------------


def test_image_folder_directory(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    splits = load_dataset(root, image_size=16, cache_dir=cache)
    assert splits.num_classes == 3
    assert splits.class_names == FOLDER_CLASSES
    assert splits.image_size == 16
    assert len(splits.train) + len(splits.val) + len(splits.test) == 18
    # Per class: round(0.6) = 1 image to val and 1 to test, 4 to train.
    assert torch.bincount(splits.val.labels).tolist() == [1, 1, 1]
    assert torch.bincount(splits.train.labels).tolist() == [4, 4, 4]
    for part in _splits_of(splits).values():
        for i in range(len(part)):
            image, label = part[i]
            assert image.shape == (3, 16, 16)
            assert image.dtype == torch.float32
            assert 0 <= label < 3
    assert len(_decoded_cache_files(cache)) == 1


def test_image_folder_second_load_uses_the_cache(tmp_path: Path, monkeypatch) -> None:
    root = _make_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    first = load_dataset(root, image_size=16, cache_dir=cache)
    [cache_file] = _decoded_cache_files(cache)
    written = cache_file.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded again despite a valid cache")

    monkeypatch.setattr(nat.data.sources, "_decode_folder", no_decoding)
    second = load_dataset(root, image_size=16, cache_dir=cache)
    assert cache_file.stat().st_mtime_ns == written
    assert second.class_names == first.class_names
    for name in ("train_eval", "val", "test"):
        a, b = _splits_of(first)[name], _splits_of(second)[name]
        assert torch.equal(a.indices, b.indices)
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


def test_image_folder_cache_notices_changed_files(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    load_dataset(root, image_size=16, cache_dir=cache)
    changed = root / "cat" / "0_0.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # A new mtime even on coarse-grained file systems.
    splits = load_dataset(root, image_size=16, cache_dir=cache)
    assert len(_decoded_cache_files(cache)) == 2
    found = [
        part[i][0]
        for part in (splits.train_eval, splits.val, splits.test)
        for i in range(len(part))
        if int(part.indices[i]) == 0
    ]
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 16, 16)
    assert len(found) == 1 and torch.equal(found[0], red)


def test_image_folder_cache_depends_on_image_size(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    small = load_dataset(root, image_size=8, cache_dir=cache)
    large = load_dataset(root, image_size=12, cache_dir=cache)
    assert small.val[0][0].shape == (3, 8, 8)
    assert large.val[0][0].shape == (3, 12, 12)
    assert len(_decoded_cache_files(cache)) == 2


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    good = load_dataset(root, image_size=16, cache_dir=cache)
    [cache_file] = _decoded_cache_files(cache)
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])  # As after a crash mid-write.
    rebuilt = load_dataset(root, image_size=16, cache_dir=cache)
    assert torch.equal(good.val[0][0], rebuilt.val[0][0])
    assert torch.load(cache_file, weights_only=True)["images"].shape[0] == 18
    cache_file.write_bytes(b"not a torch file")
    assert load_dataset(root, image_size=16, cache_dir=cache).num_classes == 3


def test_directory_holding_a_train_folder(tmp_path: Path) -> None:
    _make_image_folder(tmp_path / "unpacked" / "train")
    (tmp_path / "unpacked" / "test").mkdir()  # Ignored: we make our own test split.
    splits = load_dataset(tmp_path / "unpacked", image_size=16, cache_dir=tmp_path / "c")
    assert splits.class_names == FOLDER_CLASSES


def test_hidden_folders_are_not_classes(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / ".ipynb_checkpoints").mkdir()
    splits = load_dataset(str(root), image_size=16, cache_dir=tmp_path / "cache")
    assert splits.class_names == FOLDER_CLASSES


def test_image_folders_are_flipped_in_training(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    splits = load_dataset(root, image_size=16, cache_dir=tmp_path / "cache")
    assert splits.train.hflip is True
    plain = splits.train_eval[0][0]
    crops = _crops(plain, pad=2)
    flipped = _crops(plain.flip(-1), pad=2)
    torch.manual_seed(0)
    reads = [splits.train[0][0] for _ in range(40)]
    assert all(_matches_any(r, crops + flipped) for r in reads)
    assert any(_matches_any(r, flipped) for r in reads)
    assert any(_matches_any(r, crops) for r in reads)


def test_archive_is_unpacked_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    tree = _make_image_folder(tmp_path / "pets")
    archive = _make_archive(tmp_path / "pets.tar.gz", tree)
    cache = tmp_path / "cache"
    from_dir = load_dataset(tree, image_size=16, cache_dir=tmp_path / "dir-cache")
    splits = load_dataset(archive, image_size=16, cache_dir=cache)
    assert splits.num_classes == 3
    assert splits.class_names == FOLDER_CLASSES
    assert splits.val[0][0].shape == (3, 16, 16)
    # Same files in the same order, so the same split and pixels as the directory.
    assert torch.equal(splits.val.indices, from_dir.val.indices)
    assert torch.equal(splits.val[0][0], from_dir.val[0][0])
    # One unpacked folder named after the archive, no temporary leftovers.
    entries = sorted(p.name for p in cache.iterdir())
    assert len(_decoded_cache_files(cache)) == 1
    unpacked = [name for name in entries if not name.startswith("decoded-")]
    assert len(unpacked) == 1 and unpacked[0].startswith("pets-")
    assert not any(name.startswith(".") for name in entries)

    def fail(*args, **kwargs):
        raise AssertionError("the archive was unpacked or decoded again")

    monkeypatch.setattr(nat.data.sources, "_unpack_archive", fail)
    monkeypatch.setattr(nat.data.sources, "_decode_folder", fail)
    again = load_dataset(str(archive), image_size=16, cache_dir=cache)
    assert torch.equal(again.test[1][0], splits.test[1][0])


def test_archive_with_a_wrapper_folder(tmp_path: Path) -> None:
    tree = _make_image_folder(tmp_path / "pets")
    archive = _make_archive(tmp_path / "pets.tgz", tree, arcname="pets")
    splits = load_dataset(archive, image_size=8, cache_dir=tmp_path / "cache")
    assert splits.class_names == FOLDER_CLASSES


def test_default_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NAT_CACHE_DIR", str(tmp_path / "env-cache"))
    root = _make_image_folder(tmp_path / "pets")
    load_dataset(root, image_size=8)
    assert len(_decoded_cache_files(tmp_path / "env-cache")) == 1


# --- errors ---------------------------------------------------------------------


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found: give 'digits'"):
        load_dataset("cifar-100")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "missing.tar.gz", cache_dir=tmp_path)


def test_file_that_is_not_an_archive(tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(ValueError, match=r"not a \.tar\.gz"):
        load_dataset(image, cache_dir=tmp_path / "cache")


def test_directory_without_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_directory_with_one_class(tmp_path: Path) -> None:
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cat" / "a.png")
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_class_folder_without_images(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / "emu").mkdir()
    with pytest.raises(ValueError, match=r"\['emu'\].*contain no image files"):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_undecodable_image(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image file .*broken.png"):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_archive_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    with pytest.raises(ValueError, match="archive .*empty.tar.gz.* no class folders"):
        load_dataset(archive, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_archive(tmp_path: Path, damage: str) -> None:
    tree = _make_image_folder(tmp_path / "pets")
    archive = _make_archive(tmp_path / "pets.tar.gz", tree)
    data = archive.read_bytes()
    if damage == "garbage":
        archive.write_bytes(np.random.default_rng(0).bytes(len(data)))
    else:
        archive.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="cannot read archive .*pets.tar.gz"):
        load_dataset(archive, cache_dir=cache)
    # Nothing half-unpacked is left behind to be mistaken for a finished unpack.
    assert list(cache.iterdir()) == []


# --- CIFAR-10 (needs the shared archive next to the project) ---------------------


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.mark.slow
def test_cifar10_subset(cifar_cache: Path) -> None:
    start = time.perf_counter()
    splits = load_dataset(CIFAR_ARCHIVE, image_size=32, subset=500, cache_dir=cifar_cache)
    cold = time.perf_counter() - start
    assert splits.num_classes == 10
    assert splits.class_names[:3] == ["airplane", "automobile", "bird"]
    assert splits.class_names[-1] == "truck"
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert torch.bincount(labels).tolist() == [50] * 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (400, 50, 50)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10
    assert splits.train.hflip is True

    start = time.perf_counter()
    bigger = load_dataset(CIFAR_ARCHIVE, image_size=32, subset=2000, cache_dir=cifar_cache)
    warm = time.perf_counter() - start
    assert len(bigger.train) + len(bigger.val) + len(bigger.test) == 2000
    print(f"CIFAR-10 load: cold {cold:.1f} s, from cache {warm:.2f} s")
    assert warm < cold


# --- symlinks and wide pixels (issue 36) ------------------------------------------


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / "cat" / "loop").symlink_to(".", target_is_directory=True)
    (root / "dog" / "fox-too").symlink_to(root / "fox", target_is_directory=True)
    splits = load_dataset(root, image_size=16, cache_dir=tmp_path / "cache")
    counts = torch.bincount(torch.cat([p.labels for p in _splits_of(splits).values()]))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 3 * IMAGES_PER_CLASS
    assert counts.max() <= 2 * IMAGES_PER_CLASS  # train_eval repeats train, nothing more


def test_class_folder_on_other_storage_is_followed(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / "fox").rename(tmp_path / "elsewhere")
    (root / "fox").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    splits = load_dataset(root, image_size=16, cache_dir=tmp_path / "cache")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 3 * IMAGES_PER_CLASS


def test_one_image_under_two_names_is_refused(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    (root / "dog" / "again.png").symlink_to(root / "cat" / "0_0.png")
    with pytest.raises(ValueError, match="0_0.png' is reached again as .*again.png"):
        load_dataset(root, cache_dir=tmp_path / "cache")


def test_sixteen_bit_greyscale_is_scaled_not_saturated(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    for name in FOLDER_CLASSES:
        for file in (root / name).iterdir():
            file.unlink()
        for j in range(IMAGES_PER_CLASS):
            grey = np.full((12, 12), 32768, dtype=np.uint16)  # half of 16-bit white
            Image.fromarray(grey).save(root / name / f"{j}.png")
    splits = load_dataset(root, image_size=12, cache_dir=tmp_path / "cache")
    pixels = splits.test._images  # uint8, as decoded
    assert int(pixels.min()) == int(pixels.max()) == 128


def test_archive_member_outside_its_folder_is_named_as_refused(tmp_path: Path) -> None:
    root = _make_image_folder(tmp_path / "pets")
    archive = _make_archive(tmp_path / "pets.tar.gz", root)
    with tarfile.open(tmp_path / "escape.tar.gz", "w:gz") as out, tarfile.open(archive) as tar:
        for member in tar.getmembers():
            out.addfile(member, tar.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("../outside.png")
        info.size = 3
        out.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match="refused: .*outside.png") as err:
        load_dataset(tmp_path / "escape.tar.gz", cache_dir=tmp_path / "cache")
    assert "corrupt" not in str(err.value)
    assert not (tmp_path / "outside.png").exists()


def test_class_names_with_outer_spaces_can_be_chosen() -> None:
    from nat.data import class_numbers

    names = [" cat", "dog", "fox"]
    assert class_numbers(names, ["cat", "fox"]) == [0, 2]
    with pytest.raises(ValueError, match="' cat', dog, fox"):
        class_numbers(names, ["cow"])


def test_odd_but_legitimate_files_load(tmp_path: Path) -> None:
    """What the second probe found fine, kept: a palette PNG, a non-ASCII class name, images
    of 4x4 and 3000x3000 px, and .DS_Store files beside the images."""
    root = _make_image_folder(tmp_path / "pets")
    (root / "fox").rename(root / "été")
    palette = Image.new("RGB", (10, 10), (200, 10, 50)).quantize(colors=4)
    assert palette.mode == "P"
    palette.save(root / "cat" / "palette.png")
    Image.new("RGB", (4, 4), (0, 255, 0)).save(root / "dog" / "tiny.png")
    Image.new("RGB", (3000, 3000), (0, 0, 255)).save(root / "été" / "huge.png")
    for folder in (root, root / "cat"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    splits = load_dataset(root, image_size=8, cache_dir=tmp_path / "cache")
    assert splits.class_names == ["cat", "dog", "été"]
    parts = (splits.train, splits.val, splits.test)
    assert sum(len(p) for p in parts) == 3 * IMAGES_PER_CLASS + 3
    images = splits.test._images  # every image, as decoded
    colours = {tuple(round(float(v)) for v in image.flatten(1).float().mean(1)) for image in images}
    assert {(200, 10, 50), (0, 255, 0), (0, 0, 255)} <= colours
