import math
import re

import numpy as np
import pytest
from conftest import SPACES

import search_spaces
from nat.engine.heuristic import (
    DEPTH_GRID,
    WIDTH_GRID,
    Scaled,
    depth_only,
    feillet,
    reference_arch,
    scale_arch,
    width_only,
)
from search_spaces import make_divisible

METHODS = {"feillet": feillet, "width-only": width_only, "depth-only": depth_only}
METRIC_INDEX = {"params": 0, "macs": 1}
NUM_CLASSES = 10
FIXED = {"mbv2": 1}  # leading stages the heuristic never rescales in depth


def value(arch, metric, num_classes=NUM_CLASSES):
    return search_spaces.complexity(arch, num_classes)[METRIC_INDEX[metric]]


def scalable_depths(arch):
    return arch.depths[FIXED.get(arch.family, 0) :]


def genes(space, group):
    return [i for i, n in enumerate(space.variable_names) if re.fullmatch(rf"{group}\d*", n)]


def with_genes(space, x, width=None, depth=None):
    """A copy of encoding ``x`` with every width gene at ``width`` and the depth genes at
    ``depth`` (choice indices), repaired."""
    x = np.array(x)
    if width is not None:
        x[genes(space, "width")] = width
    if depth is not None:
        x[genes(space, "depth")] = depth
    return space.repair(x)


def snapped_depth(space, ref_depths, d):
    """Oracle for the snapped depth rule: per stage the largest choice not above
    max(min choice, round-half-up(n * d)); returns choice indices."""
    out = []
    for s, choices in enumerate(space.depth_choices):
        target = max(choices[0], min(ref_depths[s], max(1, math.floor(ref_depths[s] * d + 0.5))))
        out.append(max(i for i, c in enumerate(choices) if c <= target))
    return out


# -- continuous form: candidate families as functions of the scaled multiplier -------------------
def continuous_candidates(method, ref):
    """(multiplier grid, arch of a multiplier) of each method in continuous form."""
    if method == "feillet":
        return WIDTH_GRID, lambda w: scale_arch(ref, w, DEPTH_GRID[0])
    if method == "width-only":
        return WIDTH_GRID, lambda w: scale_arch(ref, w, 1.0)
    return DEPTH_GRID, lambda d: scale_arch(ref, 1.0, d)


def continuous_budgets(method, ref, metric):
    grid, build = continuous_candidates(method, ref)
    lo, hi = value(build(grid[0]), metric), value(build(grid[-1]), metric)
    return lo, hi, np.geomspace(lo * 1.01, hi * 1.1, 5)


@pytest.mark.parametrize("metric", ["params", "macs"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SPACES)
def test_continuous_fits_and_is_maximal(name, method, metric):
    ref = reference_arch(search_spaces.get(name))
    grid, build = continuous_candidates(method, ref)
    lo, _, budgets = continuous_budgets(method, ref, metric)
    for budget in budgets:
        r = METHODS[method](budget, ref, NUM_CLASSES, metric)
        assert isinstance(r, Scaled) and r.method == method
        assert (r.params, r.macs) == search_spaces.complexity(r.arch, NUM_CLASSES)
        assert value(r.arch, metric) <= budget
        # The answer sits on the grid; the next multiplier that changes the net exceeds budget.
        on_grid = [m for m in grid if build(m) == r.arch]
        assert on_grid, "the answer is not a network of the grid"
        if method != "depth-only":
            assert r.width == max(on_grid)
        bigger = (build(m) for m in grid if m > max(on_grid))
        nxt = next((a for a in bigger if a != r.arch), None)
        if nxt is not None:
            assert value(nxt, metric) > budget
        assert r.depth == pytest.approx(sum(scalable_depths(r.arch)) / sum(scalable_depths(ref)))
    with pytest.raises(ValueError, match="below the smallest"):
        METHODS[method](lo * 0.99, ref, NUM_CLASSES, metric)


@pytest.mark.parametrize("name", SPACES)
def test_continuous_structure_per_method(name):
    ref = reference_arch(search_spaces.get(name))
    budget = value(ref, "params") * 0.7  # above every family's full-width minimal-depth net
    f = feillet(budget, ref, NUM_CLASSES)
    # Depth first: every stage kept, exactly one block in each scalable stage.
    assert len(f.arch.stages) == len(ref.stages)
    assert scalable_depths(f.arch) == (1,) * len(scalable_depths(ref))
    assert f.arch.depths[: FIXED.get(name, 0)] == ref.depths[: FIXED.get(name, 0)]
    w = width_only(budget, ref, NUM_CLASSES)
    assert w.arch.depths == ref.depths and w.depth == 1.0
    d = depth_only(budget, ref, NUM_CLASSES)
    assert d.width == 1.0
    assert [s.channels for s in d.arch.stages] == [s.channels for s in ref.stages]
    assert (d.arch.stem_channels, d.arch.head_channels) == (ref.stem_channels, ref.head_channels)
    # Same budget: the shallow network is the widest, the full-width one the shallowest.
    assert f.width >= w.width and d.depth <= 1.0


# -- snapped form --------------------------------------------------------------------------------
def snapped_extremes(method, space, x_ref):
    """Encodings of the smallest and largest candidate of each method in snapped form."""
    top, d_ref = len(space.width_mults) - 1, x_ref[genes(space, "depth")]
    if method == "feillet":
        return with_genes(space, x_ref, 0, 0), with_genes(space, x_ref, top, 0)
    if method == "width-only":
        return with_genes(space, x_ref, 0, d_ref), with_genes(space, x_ref, top, d_ref)
    ref_depths = [c[-1] for c in space.depth_choices]
    lowest = snapped_depth(space, ref_depths, DEPTH_GRID[0])
    return with_genes(space, x_ref, top, lowest), with_genes(space, x_ref, top, d_ref)


@pytest.mark.parametrize("metric", ["params", "macs"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SPACES)
def test_snapped_is_member_fits_and_is_maximal(name, method, metric):
    space = search_spaces.get(name)
    ref = reference_arch(space)
    x_ref = space.encode(ref)
    k = METRIC_INDEX[metric]
    lo_x, hi_x = snapped_extremes(method, space, x_ref)
    lo, hi = space.complexity(lo_x, NUM_CLASSES)[k], space.complexity(hi_x, NUM_CLASSES)[k]
    top = len(space.width_mults) - 1
    for budget in np.geomspace(lo * 1.01, hi * 1.1, 5):
        r = METHODS[method](budget, None, NUM_CLASSES, metric, space=space)
        x = space.encode(r.arch)  # a member of the space
        assert (r.params, r.macs) == space.complexity(x, NUM_CLASSES)
        assert space.complexity(x, NUM_CLASSES)[k] <= budget
        w_idx = x[genes(space, "width")]
        assert (w_idx == w_idx[0]).all() and r.width == space.width_mults[w_idx[0]]
        # Kernel and expand genes of the kept blocks are the reference's.
        for b_ref, b in zip(ref.stages, r.arch.stages, strict=True):
            assert b.blocks == b_ref.blocks[: b.depth]
        if method == "depth-only":
            assert w_idx[0] == top
            ref_depths = [c[-1] for c in space.depth_choices]
            fits = [
                d
                for d in DEPTH_GRID
                if space.complexity(
                    with_genes(space, x_ref, top, snapped_depth(space, ref_depths, d)), NUM_CLASSES
                )[k]
                <= budget
            ]
            best = snapped_depth(space, ref_depths, max(fits))
            assert list(x[genes(space, "depth")]) == best
        else:
            if method == "feillet":
                assert (x[genes(space, "depth")] == 0).all()
            else:
                assert r.arch.depths == ref.depths
            if w_idx[0] < top:  # the next width choice exceeds the budget
                wider = with_genes(space, x, width=w_idx[0] + 1)
                assert space.complexity(wider, NUM_CLASSES)[k] > budget
    with pytest.raises(ValueError, match="below the smallest"):
        METHODS[method](lo * 0.99, None, NUM_CLASSES, metric, space=space)


@pytest.mark.parametrize("name", SPACES)
def test_snapped_feillet_keeps_min_depth_choice_per_stage(name):
    n_stages = search_spaces.get(name).n_stages
    # Minimum depth choices above one: the shallowest net keeps each stage's own minimum.
    depths = [[2, 3] if s % 2 else [1, 2] for s in range(n_stages)]
    space = search_spaces.get(name, depths=depths)
    ref = reference_arch(space)
    budget = space.complexity(ref, NUM_CLASSES)[0]
    r = feillet(budget, None, NUM_CLASSES, space=space)
    offset = len(r.arch.stages) - n_stages
    assert [s.depth for s in r.arch.stages[offset:]] == [d[0] for d in depths]
    assert r.width == space.width_mults[-1]  # the whole reference fits, so the widest does
    # Continuous form with the same minimum depths agrees on depth.
    mins = [d[0] for d in depths]
    assert scale_arch(ref, 1.0, DEPTH_GRID[0], mins).depths == r.arch.depths


@pytest.mark.parametrize("name", ["mbv2", "resnet"])
def test_snapped_agrees_with_continuous_at_space_widths(name):
    # Where the space scales channels as the heuristic does (largest width 1), the snapped
    # answer is the continuous network at the chosen width.
    space = search_spaces.get(name)
    ref = reference_arch(space)
    for frac in (0.2, 0.5, 0.9):
        budget = space.complexity(ref, NUM_CLASSES)[0] * frac
        r = feillet(budget, None, NUM_CLASSES, space=space)
        assert r.arch == scale_arch(ref, r.width, DEPTH_GRID[0])


# -- reference and scale_arch --------------------------------------------------------------------
@pytest.mark.parametrize("name", SPACES)
def test_reference_arch_is_the_largest_member(name):
    space = search_spaces.get(name)
    ref = reference_arch(space)
    x = space.encode(ref)
    assert ref.resolution == space.resolutions[-1]
    assert (x[genes(space, "width")] == len(space.width_mults) - 1).all()
    assert scalable_depths(ref)[-space.n_stages :] == tuple(d[-1] for d in space.depth_choices)
    blocks = [b for s in ref.stages[FIXED.get(name, 0) :] for b in s.blocks]
    assert {b.kernel_size for b in blocks} == {space.kernel_sizes[0]}
    if space.expand_ratios is not None:
        assert {b.expand_ratio for b in blocks} == {space.expand_ratios[-1]}
    assert reference_arch(space, resolution=64).resolution == 64


def test_reference_arch_reproduces_torchvision_counts():
    # ResNet-18 and MobileNetV2 at 224 px, 1000 classes (torchvision: 11,689,512 / 3,504,872).
    for name, params in (("resnet", 11_689_512), ("mbv2", 3_504_872)):
        space = search_spaces.get(name, stem="imagenet", resolutions=(224,), width_mults=(1.0,))
        assert search_spaces.complexity(reference_arch(space), 1000)[0] == params


@pytest.mark.parametrize("name", SPACES)
def test_scale_arch(name):
    ref = reference_arch(search_spaces.get(name))
    assert scale_arch(ref, 1.0, 1.0) == ref
    a = scale_arch(ref, 0.37, 0.5)
    assert a.stem_channels == make_divisible(ref.stem_channels * 0.37)
    for s_ref, s in zip(ref.stages, a.stages, strict=True):
        assert s.channels == make_divisible(s_ref.channels * 0.37) and s.stride == s_ref.stride
        assert s.blocks == s_ref.blocks[: s.depth]  # the first blocks are kept
    expected = [max(1, math.floor(n * 0.5 + 0.5)) for n in scalable_depths(ref)]
    assert list(scalable_depths(a)) == expected
    assert a.depths[: FIXED.get(name, 0)] == ref.depths[: FIXED.get(name, 0)]
    assert a.head_channels == ref.head_channels  # w <= 1 keeps every family's head
    wide = scale_arch(ref, 1.5, 1.0)
    head = make_divisible(ref.head_channels * 1.5) if name == "mbv2" else ref.head_channels
    assert wide.head_channels == head
    with pytest.raises(ValueError, match="depth"):
        scale_arch(ref, 1.0, 0.0)
    with pytest.raises(ValueError, match="depth"):
        scale_arch(ref, 1.0, 1.5)
    with pytest.raises(ValueError, match="width"):
        scale_arch(ref, 0.0, 1.0)
    with pytest.raises(ValueError, match="min_blocks"):
        scale_arch(ref, 1.0, 1.0, min_blocks=[1])
    with pytest.raises(ValueError, match="min_blocks"):
        scale_arch(ref, 1.0, 1.0, min_blocks=99)


# -- errors --------------------------------------------------------------------------------------
def test_errors_are_clear():
    space = search_spaces.get("mbv2")
    ref = reference_arch(space)
    smallest = search_spaces.complexity(scale_arch(ref, WIDTH_GRID[0], DEPTH_GRID[0]), 10)[0]
    msg = (
        rf"budget 10 params is below the smallest mbv2 network at minimal depth "
        rf"\({smallest:,} params\): raise the budget or choose a smaller family/resolution"
    )
    with pytest.raises(ValueError, match=msg):
        feillet(10, ref, 10)
    with pytest.raises(ValueError, match="MACs"):
        feillet(10, ref, 10, metric="macs", space=space)
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            feillet(bad, ref, 10)
    with pytest.raises(ValueError, match="metric"):
        width_only(1e6, ref, 10, metric="flops")
    with pytest.raises(ValueError, match="reference"):
        depth_only(1e6, None, 10)
    with pytest.raises(ValueError, match="not in space|not one of"):
        feillet(1e6, scale_arch(ref, 0.33, 1.0), 10, space=space)


# -- sanity against AdvisIL ----------------------------------------------------------------------
def imagenet_reference(name):
    space = search_spaces.get(name, stem="imagenet", resolutions=(224,), width_mults=(1.0,))
    return reference_arch(space)


def test_resnet18_at_1_5m_params_is_one_block_per_stage_at_half_width():
    r = feillet(1.5e6, imagenet_reference("resnet"), 1000)
    assert r.arch.depths == (1, 1, 1, 1) and r.depth == 0.5
    assert 0.4 <= r.width <= 0.6  # AdvisIL: w 0.5, d 0.5; the maths gives 0.5
    assert r.params <= 1.5e6


# AdvisIL's published (w, d) at 1.5M, 3M and 6M parameters; its scenarios have 100 classes.
ADVISIL = {
    "resnet": ((0.5, 0.5), (0.6, 0.5), (1.0, 0.5)),
    "mbv2": ((1.0, 0.2), (1.4, 0.2), (2.2, 0.2)),
    "shufflenetv2": ((1.6, 0.1), (2.6, 0.1), (3.0, 0.1)),
}


@pytest.mark.parametrize("name", sorted(ADVISIL))
def test_advisil_choices_fit_and_ours_are_at_least_as_wide(name):
    ref = imagenet_reference(name)
    for budget, (w, d) in zip((1.5e6, 3e6, 6e6), ADVISIL[name], strict=True):
        theirs = scale_arch(ref, w, d)
        ours = feillet(budget, ref, 100)
        assert ours.arch.depths == theirs.depths  # one block per scalable stage
        assert value(theirs, "params", 100) <= budget
        assert ours.width >= w and ours.params <= budget


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("budget", [300e3, 700e3, 1.2e6, 3e6])
def test_widths_fitted_to_a_budget_let_the_seed_use_90_percent_of_it(name, budget):
    from nat.engine.heuristic import budget_width_mults

    widths = budget_width_mults(search_spaces.get(name), 10, {"params": budget})
    space = search_spaces.get(name, width_mults=widths)
    seed = feillet(budget, None, 10, space=space)
    assert 0.9 * budget <= seed.params <= budget


@pytest.mark.parametrize("name", ["mbv2", "shufflenetv2"])
def test_a_300k_budget_is_accepted_on_the_default_spaces(name):
    from nat.folder import preflight
    from nat.spec import RunSpec

    preflight(RunSpec.from_options(space=name, max_params=300e3))


@pytest.mark.parametrize("name", SPACES)
def test_the_search_seeds_the_heuristic_that_uses_90_percent_of_the_budget(name):
    # The seed a search starts from is the same Feillet architecture as the baseline's.
    import supernets
    from nat.data import load_dataset
    from nat.engine.heuristic import budget_width_mults
    from nat.engine.loop import NATSearch
    from nat.spec import SearchConfig

    budget = 300e3
    widths = budget_width_mults(search_spaces.get(name), 10, {"params": budget})
    space = search_spaces.get(name, width_mults=widths)
    data = load_dataset("digits", image_size=8, seed=0, subset=100)
    search = NATSearch(
        supernets.build_supernet(space, 10), data, SearchConfig(max_params=budget), progress=False
    )
    params = space.complexity(search.heuristic_seeds(), 10)[0]
    assert params.max() == feillet(budget, None, 10, space=space).params
    assert 0.9 * budget <= params.max() <= budget
