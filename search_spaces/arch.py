"""Architectures as plain data.

An :class:`Arch` describes one static network of a family: resolution, stem, stages of blocks
with explicit channel counts, head. It holds any channel counts and depths, not only those of
a search space, so a heuristic can describe networks scaled by a continuous width multiplier.
Everything round-trips through JSON.

:class:`ArchArrays` is the same information for a whole population as padded numpy arrays;
the analytic complexity functions work on it so that 10,000 configs cost a few array ops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_SIDE",
    "STEMS",
    "STEM_STRIDES",
    "Arch",
    "ArchArrays",
    "Block",
    "Stage",
    "make_divisible",
]

# Stem name -> stride of the stem convolution.
# "small": stride-1 stem without max-pool, for 32x32-class inputs (CIFAR-style);
# "stride2": the small stem at stride 2, a quarter of its MACs downstream (16x16 after the stem
#   at 32 px) for a CPU budget;
# "imagenet": the torchvision stem (stride 2, plus a max-pool for ResNet and ShuffleNetV2).
STEM_STRIDES = {"small": 1, "stride2": 2, "imagenet": 2}
STEMS = tuple(STEM_STRIDES)


# Bounds of an architecture config: wider and deeper than any family's reference network at
# 4x width (MobileNetV2's head: 5,120 channels), and input sides far past ImageNet's 224 px
# (a side of 10^5 asks terabytes of the first activation).
MAX_CHANNELS = 16_384
MAX_BLOCKS = 64
MAX_SIDE = 1024


def _check_range(name: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"{name} must be {low:g} to {high:,g}{unit and ' ' + unit}, got {value}")


def make_divisible(value: float | np.ndarray, divisor: int = 8) -> int | np.ndarray:
    """Round channel counts to the nearest multiple of ``divisor`` (at least ``divisor``).

    Never more than 10 % below ``value`` (the rule of MobileNet / AdvisIL scaling).
    Works element-wise on arrays.
    """
    value_arr = np.asarray(value, dtype=np.float64)
    rounded = np.maximum(divisor, ((value_arr + divisor / 2) // divisor) * divisor)
    rounded = np.where(rounded < 0.9 * value_arr, rounded + divisor, rounded).astype(np.int64)
    return int(rounded) if rounded.ndim == 0 else rounded


@dataclass(frozen=True)
class Block:
    """One block. ``kernel_size`` in pixels; ``expand_ratio`` is MBConv's hidden/input channel
    ratio (1 means no expansion convolution) and is 1 for the other families."""

    kernel_size: int
    expand_ratio: float = 1


@dataclass(frozen=True)
class Stage:
    """Blocks sharing an output channel count; the first block applies ``stride``."""

    channels: int
    stride: int
    blocks: tuple[Block, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Arch:
    """A static architecture of one family.

    ``resolution``: input side in pixels. ``stem_channels``: output channels of the stem
    convolution. ``head_channels``: channels of the 1x1 convolution before global pooling
    (0: no such convolution, as in ResNet).
    """

    family: str
    resolution: int
    stem: str
    stem_channels: int
    stages: tuple[Stage, ...]
    head_channels: int = 0

    def __post_init__(self) -> None:
        """Refuse what no network of a family can be, and sizes far past any budget (a
        config of 10^6 channels would take gigabytes to build before failing)."""
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}: choose one of {STEMS}")
        _check_range("resolution", self.resolution, 8, MAX_SIDE, "px")
        _check_range("stem_channels", self.stem_channels, 1, MAX_CHANNELS)
        _check_range("head_channels", self.head_channels, 0, MAX_CHANNELS)
        if not self.stages:
            raise ValueError("an architecture needs at least one stage")
        for i, stage in enumerate(self.stages):
            if stage.depth < 1:
                raise ValueError(f"stage {i} has no block: every stage needs at least one")
            _check_range(f"stage {i} blocks", stage.depth, 1, MAX_BLOCKS)
            _check_range(f"stage {i} channels", stage.channels, 1, MAX_CHANNELS)
            _check_range(f"stage {i} stride", stage.stride, 1, 2)
            for j, block in enumerate(stage.blocks):
                _check_range(f"stage {i} block {j} kernel_size", block.kernel_size, 1, 15)
                _check_range(f"stage {i} block {j} expand_ratio", block.expand_ratio, 1, 16)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        try:
            stages = tuple(
                Stage(int(s["channels"]), int(s["stride"]), tuple(Block(**b) for b in s["blocks"]))
                for s in d["stages"]
            )
            return cls(
                family=str(d["family"]),
                resolution=int(d["resolution"]),
                stem=str(d["stem"]),
                stem_channels=int(d["stem_channels"]),
                stages=stages,
                head_channels=int(d.get("head_channels", 0)),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"not an architecture config (missing or bad field: {err})") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls.from_dict(json.loads(text))


@dataclass
class ArchArrays:
    """A population of architectures of one family as arrays (n = population size,
    S = stages, D = block slots per stage). Slots ``j >= depth[:, s]`` are inactive."""

    family: str
    stem: str
    resolution: np.ndarray  # (n,) px
    stem_channels: np.ndarray  # (n,)
    channels: np.ndarray  # (n, S)
    strides: np.ndarray  # (S,)
    depth: np.ndarray  # (n, S)
    kernel: np.ndarray  # (n, S, D) px
    expand: np.ndarray  # (n, S, D)
    head_channels: np.ndarray  # (n,)

    @property
    def n(self) -> int:
        return len(self.resolution)

    @classmethod
    def from_archs(cls, archs: list[Arch]) -> ArchArrays:
        if not archs:
            raise ValueError("empty population")
        first = archs[0]
        n_stages = len(first.stages)
        for a in archs:
            if (a.family, a.stem, len(a.stages)) != (first.family, first.stem, n_stages):
                raise ValueError("a population must share family, stem and number of stages")
            if tuple(s.stride for s in a.stages) != tuple(s.stride for s in first.stages):
                raise ValueError("a population must share stage strides")
        n, d_max = len(archs), max(max(a.depths) for a in archs)
        kernel = np.zeros((n, n_stages, d_max), dtype=np.int64)
        expand = np.ones((n, n_stages, d_max), dtype=np.float64)
        for i, a in enumerate(archs):
            for s, stage in enumerate(a.stages):
                for j, b in enumerate(stage.blocks):
                    kernel[i, s, j] = b.kernel_size
                    expand[i, s, j] = b.expand_ratio
        return cls(
            family=first.family,
            stem=first.stem,
            resolution=np.array([a.resolution for a in archs], dtype=np.int64),
            stem_channels=np.array([a.stem_channels for a in archs], dtype=np.int64),
            channels=np.array([[s.channels for s in a.stages] for a in archs], dtype=np.int64),
            strides=np.array([s.stride for s in first.stages], dtype=np.int64),
            depth=np.array([a.depths for a in archs], dtype=np.int64),
            kernel=kernel,
            expand=expand,
            head_channels=np.array([a.head_channels for a in archs], dtype=np.int64),
        )

    def to_archs(self) -> list[Arch]:
        archs = []
        for i in range(self.n):
            stages = []
            for s in range(len(self.strides)):
                blocks = tuple(
                    Block(int(self.kernel[i, s, j]), _plain_number(self.expand[i, s, j]))
                    for j in range(int(self.depth[i, s]))
                )
                stages.append(Stage(int(self.channels[i, s]), int(self.strides[s]), blocks))
            archs.append(
                Arch(
                    family=self.family,
                    resolution=int(self.resolution[i]),
                    stem=self.stem,
                    stem_channels=int(self.stem_channels[i]),
                    stages=tuple(stages),
                    head_channels=int(self.head_channels[i]),
                )
            )
        return archs


def _plain_number(value: float) -> float:
    """3.0 -> 3, so that configs print and serialise as people write them."""
    return int(value) if float(value).is_integer() else float(value)
