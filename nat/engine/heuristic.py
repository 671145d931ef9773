"""Scaling a reference network to a budget: the Feillet heuristic and its two ablations.

Feillet et al. (2022) / AdvisIL (WACV 2023) fit a reference network (ResNet-18, MobileNetV2,
ShuffleNetV2) to a parameter budget ``m`` with ψ(m, A_ref) → (A, w, d): **depth first** —
the shallowest network that keeps the reference's structure (every stage, each with its
minimum number of blocks, the first blocks of the stage kept) — **then width** — the largest
width multiplier ``w`` whose network fits the budget. Channels scale as
``make_divisible(c_ref * w, 8)`` for the stem and every stage, so the parameter count is a step
function of ``w``.

Two forms:

* **continuous** (``space=None``): ``w`` on :data:`WIDTH_GRID` (0.05 … 4.0 by 0.01), any
  channel counts; this is the form to compare with AdvisIL.
* **snapped** (``space`` given): ``w`` one of ``space.width_mults`` (the same choice for every
  width gene) and depths among the space's choices; the answer is an architecture of the
  space (``space.encode`` works) and seeds the search.

Reported multipliers (:class:`Scaled`): ``depth`` is always the number of blocks divided by the
reference's, over the scalable stages (MobileNetV2's fixed first block is not counted), so it
does not depend on how a depth multiplier is rounded: ResNet-18 at one block per stage has
depth 0.5 whichever ``d`` produced it. ``width`` is the multiplier of the reference's channels
in the continuous form, and the space's width choice in the snapped form (the two agree when
the space's largest width is 1, as for the default mbv2 and resnet spaces).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

import search_spaces
from search_spaces import Arch, SearchSpace, Stage, make_divisible

from .problem import BudgetError

__all__ = [
    "DEPTH_GRID",
    "METRICS",
    "WIDTH_GRID",
    "Scaled",
    "budget_width_mults",
    "depth_only",
    "feillet",
    "feillet_within",
    "reference_arch",
    "scale_arch",
    "width_only",
]

METRICS = search_spaces.COST_METRICS
# Rounded so that reported multipliers print as people write them (0.53, not 0.5300000000001).
WIDTH_GRID = tuple(round(0.01 * i, 2) for i in range(5, 401))
DEPTH_GRID = tuple(round(0.01 * i, 2) for i in range(1, 101))

# Leading stages that the heuristic never deepens or shortens: MobileNetV2's first block
# (expand 1, 16 channels) is one fixed block in every variant, as in the mbv2 space.
_FIXED_STAGES = {"mbv2": 1}
# Families whose head convolution widens with w > 1 (torchvision's MobileNetV2 rule); the
# others keep the reference's head (ShuffleNetV2's 1024, as AdvisIL does) or have none.
_HEAD_WIDENS = frozenset({"mbv2"})
_UNITS = {
    "params": "params",
    "macs": "MACs",
    "peak_memory": "bytes of peak memory",
    "model_size": "bytes of model",
}


@dataclass(frozen=True)
class Scaled:
    """A reference network scaled to a budget.

    ``width``: channel multiplier (continuous form: relative to the reference; snapped form:
    the space's width choice). ``depth``: blocks / reference blocks over the scalable stages.
    ``params``: parameters of the whole model incl. classifier; ``macs``: multiply-accumulates
    per image. ``method``: "feillet", "width-only" or "depth-only".
    """

    arch: Arch
    width: float
    depth: float
    params: int
    macs: int
    method: str


def reference_arch(space: SearchSpace, resolution: int | None = None) -> Arch:
    """The family's reference network inside ``space``: largest width and depth, smallest
    kernel, largest expand ratio (ResNet-18 / MobileNetV2 / ShuffleNetV2 when the space's
    largest width is 1 and its smallest kernel 3).

    ``resolution`` (px) defaults to the space's largest; the result is a member of the space
    only if ``resolution`` is one of its choices.
    """
    x = space.upper.copy()
    # Kernel genes to their smallest choice; width, depth and expand genes stay at the largest.
    x[_gene_positions(space, "kernel")] = 0
    arch = space.decode(x)
    return arch if resolution is None else replace(arch, resolution=int(resolution))


def scale_arch(ref: Arch, width: float, depth: float, min_blocks: Sequence[int] | int = 1) -> Arch:
    """``ref`` with channels ``make_divisible(c * width)`` and, in every scalable stage,
    ``max(min_blocks, round(n * depth))`` of its first blocks.

    ``width`` > 0 multiplies the stem, stage and (MobileNetV2, for width > 1) head channels;
    at exactly 1 the reference's channels are kept as they are. ``depth`` in (0, 1].
    ``min_blocks``: one int, or one per scalable stage (MobileNetV2's fixed first stage is not
    scalable and keeps its single block).
    """
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive number, got {width}")
    if not 0 < depth <= 1:
        raise ValueError(
            f"depth must be in (0, 1], got {depth}: the scaled network keeps the first blocks "
            "of each reference stage"
        )
    blocks = _blocks(np.array(_scalable_depths(ref)), depth, _min_blocks(ref, min_blocks))
    return _scaled(ref, width, tuple(int(b) for b in blocks))


def feillet(
    budget: float,
    ref: Arch | None,
    num_classes: int,
    metric: str = "params",
    space: SearchSpace | None = None,
    precision: str = "fp32",
) -> Scaled:
    """Feillet's ψ: minimal depth that keeps every stage, then the largest width whose
    ``metric`` (one of :data:`METRICS`: params, MACs per image, or the bytes of peak memory or
    of the model at ``precision``) is at most ``budget``.

    Continuous form without ``space`` (``ref`` required); snapped form with ``space`` (``ref``
    defaults to :func:`reference_arch` of the space and must be one of its architectures).
    Raises ValueError for a non-positive budget, an unknown metric, or a budget below the
    smallest network of the family at minimal depth.
    """
    return _width_scan(budget, ref, num_classes, metric, space, precision, full_depth=False)


def feillet_within(
    budgets: Mapping[str, float], num_classes: int, space: SearchSpace, precision: str = "fp32"
) -> Scaled:
    """Feillet's snapped architecture under several budgets at once (metric -> bound): the
    narrowest of the ones each budget alone gives, at the space's largest resolution where
    every budget can be met (MACs and peak memory grow with resolution; a 48 KB peak-memory
    budget fits no mbv2 network at 40 px, but fits at 24 px)."""
    error = ValueError("the space has no resolution")
    for resolution in reversed(space.resolutions):
        ref = reference_arch(space, resolution)
        try:
            return min(
                (feillet(b, ref, num_classes, m, space, precision) for m, b in budgets.items()),
                key=lambda scaled: scaled.width,
            )
        except ValueError as err:
            error = err
    raise error


def width_only(
    budget: float,
    ref: Arch | None,
    num_classes: int,
    metric: str = "params",
    space: SearchSpace | None = None,
    precision: str = "fp32",
) -> Scaled:
    """Ablation: the reference's full depth, the largest width that fits ``budget``.
    Forms, arguments and errors as :func:`feillet`."""
    return _width_scan(budget, ref, num_classes, metric, space, precision, full_depth=True)


def _width_scan(
    budget: float,
    ref: Arch | None,
    num_classes: int,
    metric: str,
    space: SearchSpace | None,
    precision: str,
    full_depth: bool,
) -> Scaled:
    """The largest width within ``budget`` at the reference's full depth (width-only) or at
    each stage's minimum depth (Feillet), in the continuous or the snapped form."""
    _check_budget(budget, metric)
    method = "width-only" if full_depth else "feillet"
    if space is None:
        ref = _require(ref)
        depths = _scalable_depths(ref) if full_depth else (1,) * len(_scalable_depths(ref))
        archs = [_scaled(ref, w, depths) for w in WIDTH_GRID]
        return _pick_archs(
            archs, list(WIDTH_GRID), ref, (budget, metric, precision), num_classes, method
        )
    ref, x_ref = _member(space, ref)
    n_width = len(space.width_mults)
    if full_depth:
        depth = np.repeat(x_ref[None, _gene_positions(space, "depth")], n_width, axis=0)
    else:
        depth = np.zeros((n_width, space.n_stages), dtype=np.int64)  # each stage's minimum
    X = _rows(space, x_ref, np.arange(n_width), depth)
    return _pick_rows(space, X, ref, (budget, metric, precision), num_classes, method)


def depth_only(
    budget: float,
    ref: Arch | None,
    num_classes: int,
    metric: str = "params",
    space: SearchSpace | None = None,
    precision: str = "fp32",
) -> Scaled:
    """Ablation: the reference's full width (continuous: w = 1; snapped: the largest width
    choice), the largest depth multiplier ``d`` on :data:`DEPTH_GRID` that fits ``budget``,
    with ``max(min, round(n * d))`` blocks per stage (snapped: the largest depth choice not
    above that). Forms, arguments and errors as :func:`feillet`."""
    _check_budget(budget, metric)
    if space is None:
        ref = _require(ref)
        n_ref = np.array(_scalable_depths(ref), dtype=np.int64)
        configs = _unique_rows(_blocks(n_ref, np.array(DEPTH_GRID)[:, None], 1))
        archs = [_scaled(ref, 1.0, tuple(int(b) for b in row)) for row in configs]
        return _pick_archs(
            archs, [1.0] * len(archs), ref, (budget, metric, precision), num_classes, "depth-only"
        )
    ref, x_ref = _member(space, ref)
    n_ref = np.array(_scalable_depths(ref), dtype=np.int64)
    mins = np.array([c[0] for c in space.depth_choices], dtype=np.int64)
    target = _blocks(n_ref, np.array(DEPTH_GRID)[:, None], mins)
    # Snap down to a depth the space offers: the largest choice not above the target.
    depth = np.stack(
        [
            np.searchsorted(space.depth_choices[s], target[:, s], side="right") - 1
            for s in range(space.n_stages)
        ],
        axis=1,
    )
    depth = _unique_rows(depth)
    width = np.full(len(depth), len(space.width_mults) - 1)
    X = _rows(space, x_ref, width, depth)
    return _pick_rows(space, X, ref, (budget, metric, precision), num_classes, "depth-only")


# -- helpers ------------------------------------------------------------------------------------
def _check_budget(budget: float, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")
    if math.isnan(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of {_UNITS[metric]}, got {budget}")


def _require(ref: Arch | None) -> Arch:
    if not isinstance(ref, Arch):
        raise ValueError("the continuous form needs a reference Arch (or pass space=...)")
    return ref


def _member(space: SearchSpace, ref: Arch | None) -> tuple[Arch, np.ndarray]:
    """The reference and its encoding; raises ValueError if it is not in ``space``."""
    ref = reference_arch(space) if ref is None else ref
    return ref, space.encode(ref)


def _n_fixed(arch: Arch) -> int:
    return _FIXED_STAGES.get(arch.family, 0)


def _scalable_depths(arch: Arch) -> tuple[int, ...]:
    """Blocks per stage over the stages whose depth the heuristic scales."""
    return arch.depths[_n_fixed(arch) :]


def _min_blocks(ref: Arch, min_blocks: Sequence[int] | int) -> np.ndarray:
    """``min_blocks`` as one int per scalable stage, checked against the reference."""
    n_ref = np.array(_scalable_depths(ref), dtype=np.int64)
    if isinstance(min_blocks, int | np.integer):
        mins = np.full(len(n_ref), int(min_blocks), dtype=np.int64)
    else:
        mins = np.array([int(m) for m in min_blocks], dtype=np.int64)
        if len(mins) != len(n_ref):
            raise ValueError(
                f"min_blocks has {len(mins)} entries, {ref.family} has {len(n_ref)} scalable stages"
            )
    if (mins < 1).any() or (mins > n_ref).any():
        raise ValueError(
            f"min_blocks {mins.tolist()} must be between 1 and the reference's depths "
            f"{n_ref.tolist()}"
        )
    return mins


def _blocks(n_ref: np.ndarray, depth: float | np.ndarray, mins: np.ndarray | int) -> np.ndarray:
    """Blocks per stage ``max(mins, round(n_ref * depth))``, at most ``n_ref``; broadcasts.

    Rounds half up (2.5 blocks -> 3). Not AdvisIL's ``make_divisible(n * d, 1)``, whose
    10 % rule also rounds 1.2 blocks up to 2; the 9-decimal rounding removes float noise
    (0.58 * 25 = 14.499999999999998) before the half-up step.
    """
    rounded = np.floor(np.round(n_ref * depth, 9) + 0.5).astype(np.int64)
    return np.maximum(mins, np.minimum(n_ref, rounded))


def _channels(c: int, width: float) -> int:
    # At exactly w = 1 keep the reference (make_divisible would move ShuffleNetV2's 116 to 120).
    return int(c) if width == 1 else int(make_divisible(c * width))


def _scaled(ref: Arch, width: float, blocks: tuple[int, ...]) -> Arch:
    """``ref`` at channel multiplier ``width`` with ``blocks[s]`` first blocks in scalable
    stage ``s``; fixed stages keep their blocks."""
    fixed = _n_fixed(ref)
    stages = tuple(
        Stage(
            _channels(stage.channels, width),
            stage.stride,
            stage.blocks if s < fixed else stage.blocks[: blocks[s - fixed]],
        )
        for s, stage in enumerate(ref.stages)
    )
    widens = ref.family in _HEAD_WIDENS and width > 1
    return Arch(
        family=ref.family,
        resolution=ref.resolution,
        stem=ref.stem,
        stem_channels=_channels(ref.stem_channels, width),
        stages=stages,
        head_channels=_channels(ref.head_channels, width) if widens else ref.head_channels,
    )


def _depth_ratio(arch: Arch, ref: Arch) -> float:
    """Blocks over the reference's, scalable stages only, rounded for display."""
    return round(sum(_scalable_depths(arch)) / sum(_scalable_depths(ref)), 4)


def _unique_rows(a: np.ndarray) -> np.ndarray:
    """Distinct rows in their first-seen order (the grids are ascending, so the order is
    ascending in size)."""
    _, first = np.unique(a, axis=0, return_index=True)
    return a[np.sort(first)]


def _gene_positions(space: SearchSpace, group: str) -> np.ndarray:
    """Indices in x of the variables of ``group`` ("width", "depth", "kernel", "expand"), in
    order; width is one gene ("width") or one per stage ("width0", ...)."""
    pattern = re.compile(rf"{group}[\d.]*")
    return np.array(
        [i for i, name in enumerate(space.variable_names) if pattern.fullmatch(name)],
        dtype=np.int64,
    )


def _rows(
    space: SearchSpace, x_ref: np.ndarray, width: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """Encodings of the reference with every width gene at ``width[i]`` and the depth genes at
    ``depth[i]`` (choice indices); kernel and expand genes stay the reference's, so the first
    blocks of each stage are kept. Repaired, hence canonical members of the space."""
    X = np.repeat(x_ref[None], len(width), axis=0)
    X[:, _gene_positions(space, "width")] = np.asarray(width)[:, None]
    X[:, _gene_positions(space, "depth")] = depth
    return space.repair(X)


def _largest_fitting(
    values: np.ndarray, budget: float, metric: str, family: str, method: str
) -> int:
    """Index of the last candidate whose value is within ``budget``; the candidates are in
    ascending order of the scaled multiplier."""
    fits = np.flatnonzero(values <= budget)
    if len(fits) == 0:
        where = {
            "feillet": "at minimal depth",
            "width-only": "at full depth",
            "depth-only": "at full width",
        }[method]
        unit = _UNITS[metric]
        raise ValueError(
            f"budget {budget:,.0f} {unit} is below the smallest {family} network {where} "
            f"({int(values.min()):,} {unit}): raise the budget or choose a smaller "
            "family/resolution"
        )
    return int(fits[-1])


def _pick_archs(
    archs: list[Arch],
    widths: list[float],
    ref: Arch,
    target: tuple[float, str, str],
    num_classes: int,
    method: str,
) -> Scaled:
    costs = search_spaces.costs(archs, num_classes)
    return _pick(lambda i: (archs[i], widths[i]), costs, ref, target, method)


def _pick_rows(
    space: SearchSpace,
    X: np.ndarray,
    ref: Arch,
    target: tuple[float, str, str],
    num_classes: int,
    method: str,
) -> Scaled:
    width_at = _gene_positions(space, "width")[0]

    def row(i: int) -> tuple[Arch, float]:
        return space.decode(X[i]), float(space.width_mults[X[i, width_at]])

    return _pick(row, space.costs(X, num_classes), ref, target, method)


def _pick(
    candidate, costs: search_spaces.Tally, ref: Arch, target: tuple[float, str, str], method: str
) -> Scaled:
    """The largest candidate within ``target`` = (budget, metric, precision);
    ``candidate(i)`` gives (arch, width)."""
    budget, metric, precision = target
    values = costs.metric(metric, precision)
    i = _largest_fitting(values, budget, metric, ref.family, method)
    arch, width = candidate(i)
    params, macs = int(costs.params[i]), int(costs.macs[i])
    return Scaled(arch, width, _depth_ratio(arch, ref), params, macs, method)


def budget_width_mults(
    space: SearchSpace,
    num_classes: int,
    limits: Mapping[str, float | None],
    fractions: Sequence[float] = (0.5, 0.71, 1.0),
    precision: str = "fp32",
) -> tuple[float, ...]:
    """Width choices fitted to the budgets ``limits`` (metric of :data:`METRICS` -> upper
    bound or None; bytes at ``precision`` for the memories): the Feillet width w* of the
    tightest budget, on a 0.01 grid, times ``fractions`` (the seeds at 1/4, 1/2 and all of a
    parameter budget then sit near their own budgets, the seed at the full budget within a
    few percent of it). ``space`` gives everything but the widths."""
    # The whole grid, above 1 too: a budget larger than the reference network at one block a
    # stage (about 1.2M params on mbv2) is spent on width, as the rule says, not left unused.
    fine = search_spaces.get(space.name, **{**space.options, "width_mults": WIDTH_GRID})
    widest = []
    largest = fine.costs(fine.largest(), num_classes)
    for metric, budget in limits.items():
        if budget is None:
            continue
        most = int(largest.metric(metric, precision)[0])
        if budget > most:
            # Nothing would bound the search, and its supernet (4x the reference width at
            # full depth) may not fit in memory: say so before building it.
            raise BudgetError(
                metric,
                f"budget of {budget:.4g} {_UNITS[metric]} is above the largest {space.name} "
                f"subnet at width {WIDTH_GRID[-1]} ({most:,} {_UNITS[metric]}): give at most that",
            )
        try:
            widest.append(feillet_within({metric: budget}, num_classes, fine, precision).width)
        except ValueError as err:
            raise BudgetError(metric, str(err)) from None
    if not widest:
        raise ValueError(f"budget_width_mults needs a budget on one of {METRICS}")
    top = min(widest)
    return tuple(sorted({max(WIDTH_GRID[0], round(top * f, 2)) for f in fractions}))
