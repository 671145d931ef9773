"""The integer encoding shared by every family, and the registry of spaces.

A vector ``x`` holds one index per variable, each into that variable's sorted choices:

    [resolution, width (one, or one per stage), depth per stage,
     kernel per block slot, (expand ratio per block slot, MBConv only)]

Slots beyond a stage's depth are inactive; :meth:`SearchSpace.repair` sets them to 0 so every
architecture has exactly one encoding (the surrogate then never sees two codes for one net).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .arch import MAX_SIDE, STEMS, Arch, ArchArrays
from .counting import Tally

__all__ = [
    "MAX_SIDE",
    "SearchSpace",
    "SpaceOptionError",
    "complexity",
    "costs",
    "from_dict",
    "get",
    "list_spaces",
    "register",
]

_SPACES: dict[str, type[SearchSpace]] = {}
_COSTS: dict[str, Callable[[ArchArrays, int], Tally]] = {}


def register(name: str) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator adding a space to the registry under ``name``; duplicates raise."""

    def add(cls: type[SearchSpace]) -> type[SearchSpace]:
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is registered twice")
        cls.name = name
        _SPACES[name] = cls
        _COSTS[cls.family] = cls.costs_of_arrays
        return cls

    return add


def list_spaces() -> list[str]:
    """Names of the registered search spaces."""
    return sorted(_SPACES)


def get(name: str, **options: Any) -> SearchSpace:
    """Build the search space ``name`` with its options (see each space's docstring)."""
    if name not in _SPACES:
        raise ValueError(f"unknown search space {name!r}: choose one of {list_spaces()}")
    try:
        return _SPACES[name](**options)
    except TypeError as err:
        raise ValueError(f"bad option for search space {name!r}: {err}") from err


def from_dict(doc: dict[str, Any]) -> SearchSpace:
    """The space that :meth:`SearchSpace.to_dict` describes."""
    try:
        name, options = doc["name"], doc["options"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"a space is described by {{'name', 'options'}}, got {doc!r}") from err
    return get(name, **options)


def costs(archs: Sequence[Arch], num_classes: int) -> Tally:
    """Analytic costs (:class:`~search_spaces.counting.Tally`) of static architectures of
    one registered family."""
    archs = list(archs)
    if not archs:
        raise ValueError("no architecture given")
    family = archs[0].family
    if family not in _COSTS:
        raise ValueError(f"unknown family {family!r}: choose one of {sorted(_COSTS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return _COSTS[family](ArchArrays.from_archs(archs), num_classes)


def complexity(arch: Arch | Sequence[Arch], num_classes: int) -> tuple[Any, Any]:
    """(parameters, MACs) of static architectures of any registered family, analytically.

    MACs are multiply-accumulates of convolutions and linear layers for one image, as
    torchvision counts them. Scalars for one ``Arch``, int64 arrays for a sequence.
    """
    tally = costs([arch] if isinstance(arch, Arch) else arch, num_classes)
    if isinstance(arch, Arch):
        return int(tally.params[0]), int(tally.macs[0])
    return tally.params, tally.macs


class SpaceOptionError(ValueError):
    """A space option out of range; ``option`` names it ("resolutions", "kernel_sizes", ...),
    so that a caller can name its own flag without reading the message."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def _sorted_choices(name: str, values: Sequence, kind: type = int) -> tuple:
    if isinstance(values, (str, bytes)):  # "357" would silently mean (3, 5, 7)
        raise SpaceOptionError(name, f"expected a list of numbers, got the string {values!r}")
    try:
        choices = tuple(sorted({kind(v) for v in values}))
    except (TypeError, ValueError) as err:
        raise SpaceOptionError(name, f"expected a list of numbers, got {values!r}") from err
    if not choices:
        raise SpaceOptionError(name, "needs at least one choice")
    if not all(np.isfinite(c) for c in choices):
        raise SpaceOptionError(name, f"choices must be finite numbers, got {list(values)}")
    if any(c <= 0 for c in choices):
        raise SpaceOptionError(name, f"choices must be positive, got {choices}")
    return choices


class SearchSpace:
    """A family's architectures as integer vectors. Subclasses set ``family``, build their
    stage table in ``__init__`` and implement ``_assemble`` and ``costs_of_arrays``."""

    name: str = ""
    family: str = ""
    imagenet_stem_pool: bool = True  # the ImageNet stem ends with a 3x3 stride-2 max-pool

    def __init__(
        self,
        *,
        resolutions: Sequence[int],
        width_mults: Sequence[float],
        width_per_stage: bool,
        max_depths: Sequence[int],
        depths: Sequence[Sequence[int]] | None,
        kernel_sizes: Sequence[int],
        expand_ratios: Sequence[float] | None,
        stem: str,
    ) -> None:
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}: choose one of {STEMS}")
        if depths is None:  # every depth from 1 to the reference network's
            depths = [range(1, d + 1) for d in max_depths]
        if len(depths) != len(max_depths):
            raise ValueError(
                f"{self.family} needs depth choices for {len(max_depths)} stages, got {len(depths)}"
            )
        self.stem = stem
        self.resolutions = _sorted_choices("resolutions", resolutions)
        if not 8 <= self.resolutions[0] <= self.resolutions[-1] <= MAX_SIDE:
            raise SpaceOptionError(
                "resolutions", f"must be 8 to {MAX_SIDE} px, got {list(self.resolutions)}"
            )
        self.width_mults = _sorted_choices("width_mults", width_mults, float)
        self.depth_choices = tuple(_sorted_choices(f"depths[{s}]", d) for s, d in enumerate(depths))
        self.kernel_sizes = _sorted_choices("kernel_sizes", kernel_sizes)
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise SpaceOptionError("kernel_sizes", f"must be odd, got {self.kernel_sizes}")
        self.expand_ratios = (
            None
            if expand_ratios is None
            else _sorted_choices("expand_ratios", expand_ratios, float)
        )
        self.n_stages = len(self.depth_choices)
        self.max_depths = tuple(d[-1] for d in self.depth_choices)
        n_width = self.n_stages if width_per_stage else 1

        names: list[str] = ["resolution"]
        sizes: list[int] = [len(self.resolutions)]
        names += [f"width{s}" for s in range(n_width)] if width_per_stage else ["width"]
        sizes += [len(self.width_mults)] * n_width
        names += [f"depth{s}" for s in range(self.n_stages)]
        sizes += [len(d) for d in self.depth_choices]
        slots = [(s, j) for s in range(self.n_stages) for j in range(self.max_depths[s])]
        names += [f"kernel{s}.{j}" for s, j in slots]
        sizes += [len(self.kernel_sizes)] * len(slots)
        if self.expand_ratios is not None:
            names += [f"expand{s}.{j}" for s, j in slots]
            sizes += [len(self.expand_ratios)] * len(slots)
        self.variable_names = tuple(names)
        self.n_var = len(names)
        self.lower = np.zeros(self.n_var, dtype=np.int64)
        self.upper = np.array(sizes, dtype=np.int64) - 1

        # Where each group of variables sits in x.
        self._width = slice(1, 1 + n_width)
        self._depth = slice(self._width.stop, self._width.stop + self.n_stages)
        self._kernel = slice(self._depth.stop, self._depth.stop + len(slots))
        self._expand = slice(self._kernel.stop, self._kernel.stop + len(slots))
        self._slot_stage = np.array([s for s, _ in slots])
        self._slot_index = np.array([j for _, j in slots])
        self._depth_table = np.zeros((self.n_stages, max(sizes[self._depth])), dtype=np.int64)
        for s, d in enumerate(self.depth_choices):
            self._depth_table[s, : len(d)] = d

    def to_dict(self) -> dict[str, Any]:
        """Name and options, JSON-able: :func:`from_dict` rebuilds the same space."""
        return {"name": self.name, "options": self.options}

    # -- to be provided by each family ------------------------------------------------------
    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this space with :func:`get` (JSON-able)."""
        options: dict[str, Any] = {
            "resolutions": list(self.resolutions),
            "width_mults": list(self.width_mults),
            "depths": [list(d) for d in self.depth_choices],
            "kernel_sizes": list(self.kernel_sizes),
        }
        if self.expand_ratios is not None:
            options["expand_ratios"] = list(self.expand_ratios)
        return {**options, "stem": self.stem}

    def _assemble(
        self,
        resolution: np.ndarray,
        widths: np.ndarray,
        depth: np.ndarray,
        kernel: np.ndarray,
        expand: np.ndarray,
    ) -> ArchArrays:
        """Architectures from choice *values*: resolution (n,), widths (n, n_width),
        depth (n, S), kernel and expand (n, S, D) over the searchable stages."""
        raise NotImplementedError

    @staticmethod
    def costs_of_arrays(arrays: ArchArrays, num_classes: int) -> Tally:
        """The costs of ``arrays``' networks, counted along their forward pass."""
        raise NotImplementedError

    # -- the encoding --------------------------------------------------------------------------
    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"search_spaces.get({self.name!r}, {opts})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and (self.name, self.options) == (
            other.name,
            other.options,
        )

    def __hash__(self) -> int:
        return hash((self.name, repr(self.options)))

    def check(self, x: np.ndarray) -> np.ndarray:
        """x as an (n, n_var) int64 array, after checking its shape, integrality and bounds;
        a ValueError names the first offending variable."""
        arr = np.asarray(x)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.n_var:
            raise ValueError(
                f"expected vectors of {self.n_var} integers for space {self.name!r}, "
                f"got an array of shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("encodings must be integers; use space.repair(x) to round them")
        arr = np.atleast_2d(arr).astype(np.int64)
        bad = (arr < self.lower) | (arr > self.upper)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"variable {self.variable_names[col]} = {arr[row, col]} is outside "
                f"[{self.lower[col]}, {self.upper[col]}]; use space.repair(x)"
            )
        return arr

    def to_arrays(self, x: np.ndarray) -> ArchArrays:
        """Decode a population (n, n_var) into arrays, vectorised."""
        X = self.check(x)
        n, d_max = len(X), max(self.max_depths)
        depth = self._depth_table[np.arange(self.n_stages), X[:, self._depth]]
        kernel = np.zeros((n, self.n_stages, d_max), dtype=np.int64)
        kernel[:, self._slot_stage, self._slot_index] = np.asarray(self.kernel_sizes)[
            X[:, self._kernel]
        ]
        expand = np.ones((n, self.n_stages, d_max), dtype=np.float64)
        if self.expand_ratios is not None:
            expand[:, self._slot_stage, self._slot_index] = np.asarray(self.expand_ratios)[
                X[:, self._expand]
            ]
        return self._assemble(
            np.asarray(self.resolutions)[X[:, 0]],
            np.asarray(self.width_mults)[X[:, self._width]],
            depth,
            kernel,
            expand,
        )

    def decode(self, x: np.ndarray) -> Arch:
        """The architecture of one integer vector."""
        if np.asarray(x).ndim != 1:
            raise ValueError("decode takes one vector; use to_arrays(X).to_archs() for many")
        return self.to_arrays(x).to_archs()[0]

    def encode(self, arch: Arch) -> np.ndarray:
        """The integer vector of an architecture of this space; raises ValueError naming the
        first field that is not one of the space's choices."""
        if not isinstance(arch, Arch):
            raise TypeError(f"encode takes an Arch, got {type(arch).__name__}")
        if arch.family != self.family:
            raise ValueError(
                f"architecture of family {arch.family!r} is not in space {self.name!r}"
            )
        if arch.stem != self.stem:
            raise ValueError(
                f"architecture has stem {arch.stem!r}, space {self.name!r} has {self.stem!r}"
            )
        searchable = self._searchable_stages(arch)
        if len(searchable) != self.n_stages:
            raise ValueError(
                f"architecture has {len(searchable)} searchable stages, space {self.name!r} has "
                f"{self.n_stages}"
            )
        x = np.zeros(self.n_var, dtype=np.int64)
        x[0] = _index(self.resolutions, arch.resolution, "resolution")
        for s, stage in enumerate(searchable):
            x[self._depth.start + s] = _index(
                self.depth_choices[s], stage.depth, f"depth of stage {s}"
            )
            for j, block in enumerate(stage.blocks):
                slot = self._slot_of(s, j)
                what = f"stage {s} block {j}"
                x[self._kernel.start + slot] = _index(
                    self.kernel_sizes, block.kernel_size, f"kernel size of {what}"
                )
                if self.expand_ratios is not None:
                    x[self._expand.start + slot] = _index(
                        self.expand_ratios, block.expand_ratio, f"expand ratio of {what}"
                    )
                elif block.expand_ratio != 1:
                    raise ValueError(f"expand ratio of {what} must be 1 in space {self.name!r}")
        x[self._width] = self._width_indices(arch, x)
        decoded = self.decode(x)
        if decoded != arch:
            raise ValueError(
                f"architecture is not in space {self.name!r}: its channels "
                f"(stem {arch.stem_channels}, stages {[s.channels for s in arch.stages]}, head "
                f"{arch.head_channels}) match no width choice {self.width_mults}"
            )
        return x

    def _searchable_stages(self, arch: Arch) -> tuple:
        """The stages the encoding describes (MBConv has a fixed first stage)."""
        return arch.stages

    def _slot_of(self, stage: int, block: int) -> int:
        return int(np.flatnonzero((self._slot_stage == stage) & (self._slot_index == block))[0])

    def _width_indices(self, arch: Arch, x: np.ndarray) -> np.ndarray:
        """Width indices that reproduce ``arch``'s channels: per stage when width is per
        stage, else the one multiplier that matches every stage."""
        n_width = self._width.stop - self._width.start
        trial = np.repeat(x[None], len(self.width_mults), axis=0)
        trial[:, self._width] = np.arange(len(self.width_mults))[:, None]
        channels = self.to_arrays(trial).channels  # (n_choices, S_total)
        target = np.array([s.channels for s in arch.stages])
        offset = len(arch.stages) - self.n_stages
        if n_width == 1:
            match = np.flatnonzero((channels == target).all(axis=1))
            # Widths above 1 can round to the same stage channels and differ only in the
            # stem or head (MobileNetV2's head grows with them): the one that decodes to arch.
            exact = [i for i in match if self.decode(trial[i]) == arch]
            return np.array((exact or list(match) or [0])[:1], dtype=np.int64)
        out = np.zeros(n_width, dtype=np.int64)
        for s in range(n_width):
            match = np.flatnonzero(channels[:, offset + s] == target[offset + s])
            out[s] = match[0] if len(match) else 0
        return out

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Round and clip to bounds, and zero the inactive slots: any real vector (or
        (n, n_var) array) becomes the canonical encoding of a valid architecture."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.n_var:
            raise ValueError(f"expected vectors of {self.n_var} values, got shape {arr.shape}")
        X = np.clip(np.rint(np.nan_to_num(np.atleast_2d(arr))), self.lower, self.upper)
        X = X.astype(np.int64)
        depth = self._depth_table[np.arange(self.n_stages), X[:, self._depth]]
        inactive = self._slot_index[None, :] >= depth[:, self._slot_stage]
        X[:, self._kernel] = np.where(inactive, 0, X[:, self._kernel])
        if self.expand_ratios is not None:
            X[:, self._expand] = np.where(inactive, 0, X[:, self._expand])
        return X[0] if arr.ndim == 1 else X

    # The groups of variables, by the names progressive shrinking opens them with.
    GROUPS = ("resolution", "width", "depth", "kernel", "expand")

    def restrict(self, x: np.ndarray, base: np.ndarray, elastic: Sequence[str]) -> np.ndarray:
        """``x`` with only the groups of variables named in ``elastic`` (of :attr:`GROUPS`)
        kept; the others are ``base``'s. A block that ``x`` has but ``base`` lacks takes the
        largest kernel or expand ratio where those are not elastic, and one that ``base`` has
        but ``x`` lacks keeps ``base``'s. OFA's progressive shrinking samples this way."""
        unknown = set(elastic) - set(self.GROUPS)
        if unknown:
            raise ValueError(
                f"unknown variable groups {sorted(unknown)}: choose from {self.GROUPS}"
            )
        x, out = self.check(x)[0], self.check(base)[0].copy()
        groups = {"resolution": slice(0, 1), "width": self._width, "depth": self._depth}
        slot_groups = {"kernel": self._kernel}
        if self.expand_ratios is not None:
            slot_groups["expand"] = self._expand

        def in_depth(v: np.ndarray) -> np.ndarray:
            depth = self._depth_table[np.arange(self.n_stages), v[self._depth]]
            return self._slot_index < depth[self._slot_stage]

        in_x, in_base = in_depth(x), in_depth(out)
        for name, group in slot_groups.items():
            out[group] = np.where(in_base, out[group], self.upper[group])
            if name in elastic:
                out[group] = np.where(in_x, x[group], out[group])
        for name in set(elastic) & set(groups):
            out[groups[name]] = x[groups[name]]
        return self.repair(out)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` valid encodings (n, n_var), each variable uniform over its choices."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("sample needs a numpy Generator, e.g. np.random.default_rng(0)")
        X = rng.integers(self.lower, self.upper + 1, size=(n, self.n_var))
        return self.repair(X).reshape(n, self.n_var)

    def smallest(self) -> Arch:
        """The architecture with the smallest choice everywhere."""
        return self.decode(self.repair(self.lower))

    def largest(self) -> Arch:
        """The architecture with the largest choice everywhere."""
        return self.decode(self.upper)

    def costs(self, cfg_or_x: Any, num_classes: int) -> Tally:
        """Analytic costs of an ``Arch``, a list of them, one encoding (n_var,) or a
        population (n, n_var), without building a model: parameters, MACs, peak activation
        memory and model size (see :class:`search_spaces.counting.Tally`), as (n,) arrays."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if _is_archs(cfg_or_x):
            archs = [cfg_or_x] if isinstance(cfg_or_x, Arch) else list(cfg_or_x)
            for a in archs:
                if a.family != self.family:
                    raise ValueError(
                        f"architecture of family {a.family!r} given to space {self.name!r}"
                    )
            return self.costs_of_arrays(ArchArrays.from_archs(archs), num_classes)
        return self.costs_of_arrays(self.to_arrays(cfg_or_x), num_classes)

    def complexity(self, cfg_or_x: Any, num_classes: int) -> tuple[Any, Any]:
        """(parameters, MACs per image) computed analytically, without building a model.

        Takes what :meth:`costs` takes; returns ints for one architecture or one encoding,
        int64 arrays for a list or a population.
        """
        tally = self.costs(cfg_or_x, num_classes)
        one = isinstance(cfg_or_x, Arch) or (
            not _is_archs(cfg_or_x) and np.asarray(cfg_or_x).ndim == 1
        )
        if one:
            return int(tally.params[0]), int(tally.macs[0])
        return tally.params, tally.macs

    def units(self, x: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, active) of a population's units (stem, block slots, head): see
        :func:`search_spaces.units.units_of_arrays`."""
        from .units import units_of_arrays

        return units_of_arrays(
            self.to_arrays(np.atleast_2d(x)), num_classes, self.imagenet_stem_pool
        )

    def covering_population(self) -> np.ndarray:
        """Encodings whose units, together, include every unit of every subnet of the space
        (see :func:`search_spaces.units.covering_population`)."""
        from .units import covering_population

        return covering_population(self)


def _is_archs(cfg_or_x: Any) -> bool:
    return isinstance(cfg_or_x, Arch) or (
        isinstance(cfg_or_x, (list, tuple)) and bool(cfg_or_x) and isinstance(cfg_or_x[0], Arch)
    )


def _index(choices: tuple, value: Any, what: str) -> int:
    for i, c in enumerate(choices):
        if c == value:
            return i
    raise ValueError(f"{what} is {value}, not one of the space's choices {choices}")
