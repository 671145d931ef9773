import json

import numpy as np
import pytest
from conftest import SPACES, small_space

import search_spaces
from search_spaces import Arch, Block, Stage


@pytest.mark.parametrize("name", SPACES)
def test_encode_decode_roundtrip(name, rng):
    space = search_spaces.get(name)
    X = space.sample(200, rng)
    for x in X:
        arch = space.decode(x)
        assert np.array_equal(space.encode(arch), x)
        assert Arch.from_json(json.dumps(arch.to_dict())) == arch


def test_widths_above_1_that_share_stage_channels_encode_by_their_head():
    # 1.99 and 2.0 round to the same stage channels; only MobileNetV2's head tells them apart.
    space = search_spaces.get("mbv2", width_mults=(1.99, 2.0))
    for x in space.sample(50, np.random.default_rng(0)):
        assert np.array_equal(space.encode(space.decode(x)), x)
    narrow, wide = space.smallest(), space.largest()
    assert [s.channels for s in narrow.stages] == [s.channels for s in wide.stages]
    assert narrow.head_channels != wide.head_channels


@pytest.mark.parametrize("name", SPACES)
def test_repair_makes_any_vector_valid(name, rng):
    space = search_spaces.get(name)
    raw = rng.uniform(-3, space.upper + 3, size=(300, space.n_var))
    X = space.repair(raw)
    assert X.dtype == np.int64 and X.shape == raw.shape
    assert (X >= space.lower).all() and (X <= space.upper).all()
    for x in X:
        assert np.array_equal(space.encode(space.decode(x)), x)  # canonical and valid
    assert np.array_equal(space.repair(X), X)  # idempotent


@pytest.mark.parametrize("name", SPACES)
def test_sample_is_valid_and_diverse(name, rng):
    space = search_spaces.get(name)
    X = space.sample(100, rng)
    assert np.array_equal(space.repair(X), X)
    assert len({tuple(x) for x in X}) > 90
    assert np.array_equal(
        space.sample(5, np.random.default_rng(3)), space.sample(5, np.random.default_rng(3))
    )


@pytest.mark.parametrize("name", SPACES)
def test_smallest_and_largest_bound_the_population(name, rng):
    space = search_spaces.get(name)
    params, macs = space.complexity(space.sample(500, rng), 10)
    p_min, m_min = space.complexity(space.smallest(), 10)
    p_max, m_max = space.complexity(space.largest(), 10)
    assert p_min <= params.min() and params.max() <= p_max
    assert m_min <= macs.min() and macs.max() <= m_max


@pytest.mark.parametrize("name", SPACES)
def test_population_complexity_equals_per_arch(name, rng):
    space = search_spaces.get(name)
    X = space.sample(50, rng)
    params, macs = space.complexity(X, 7)
    for i, x in enumerate(X):
        assert (params[i], macs[i]) == space.complexity(space.decode(x), 7)
        assert (params[i], macs[i]) == space.complexity(x, 7)


@pytest.mark.parametrize("name", SPACES)
def test_options_rebuild_the_space(name):
    space = search_spaces.get(name, resolutions=[32, 16], kernel_sizes=[3, 5])
    again = search_spaces.get(name, **json.loads(json.dumps(space.options)))
    assert again == space and again.n_var == space.n_var
    assert space.resolutions == (16, 32)


def test_torchvision_architectures_have_published_counts():
    # torchvision's published figures for resnet18, mobilenet_v2, shufflenet_v2_x1_0
    resnet18 = Arch(
        "resnet",
        224,
        "imagenet",
        64,
        tuple(
            Stage(c, s, (Block(3),) * 2)
            for c, s in zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)
        ),
    )
    setting = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    mobilenet_v2 = Arch(
        "mbv2",
        224,
        "imagenet",
        32,
        tuple(Stage(c, s, (Block(3, t),) * n) for t, c, n, s in setting),
        1280,
    )
    shufflenet = Arch(
        "shufflenetv2",
        224,
        "imagenet",
        24,
        tuple(
            Stage(c, 2, (Block(3),) * n) for c, n in zip((116, 232, 464), (4, 8, 4), strict=True)
        ),
        1024,
    )
    assert search_spaces.complexity(resnet18, 1000) == (11_689_512, 1_814_073_344)
    assert search_spaces.complexity(mobilenet_v2, 1000) == (3_504_872, 300_774_272)
    assert search_spaces.complexity(shufflenet, 1000) == (2_278_604, 144_907_992)


def test_make_divisible():
    assert search_spaces.make_divisible(116) == 120
    assert search_spaces.make_divisible(3) == 8
    assert search_spaces.make_divisible(59) == 56  # nearest, and not 10 % below
    assert list(search_spaces.make_divisible(np.array([20.0, 36.0]))) == [24, 40]


def test_unknown_space_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown search space 'mobilenet'.*mbv2"):
        search_spaces.get("mobilenet")
    with pytest.raises(ValueError, match="bad option"):
        search_spaces.get("mbv2", kernels=(3,))


@pytest.mark.parametrize("name", SPACES)
def test_bad_vectors_are_clear_errors(name):
    space = search_spaces.get(name)
    with pytest.raises(ValueError, match=f"expected vectors of {space.n_var}"):
        space.decode(np.zeros(space.n_var + 1, dtype=int))
    with pytest.raises(ValueError, match="outside"):
        space.decode(space.upper + 1)
    with pytest.raises(ValueError, match="integers"):
        space.decode(np.full(space.n_var, 0.5))


def test_config_outside_choices_is_a_clear_error():
    space = search_spaces.get("mbv2")
    arch = space.largest()
    wrong_kernel = Arch.from_dict(
        json.loads(arch.to_json().replace('"kernel_size": 7', '"kernel_size": 9', 1))
    )
    with pytest.raises(ValueError, match="kernel size of stage 0 block 0 is 9"):
        space.encode(wrong_kernel)
    d = arch.to_dict()
    d["resolution"] = 100
    with pytest.raises(ValueError, match="resolution is 100, not one of"):
        space.encode(Arch.from_dict(d))
    d = arch.to_dict()
    d["stages"][3]["channels"] = 100
    with pytest.raises(ValueError, match="channels.*match no width choice"):
        space.encode(Arch.from_dict(d))
    with pytest.raises(ValueError, match="family 'resnet'"):
        space.encode(search_spaces.get("resnet").largest())
    with pytest.raises(ValueError, match="resolutions: must be 8 to 1024"):
        search_spaces.get("resnet", resolutions=(4, 32))
    with pytest.raises(ValueError, match="resolution must be 8 to 1,024 px, got 4"):
        d = arch.to_dict()
        d["resolution"] = 4
        Arch.from_dict(d)
    with pytest.raises(ValueError, match="not an architecture config"):
        Arch.from_dict({"family": "mbv2"})


def test_search_spaces_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, search_spaces; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", SPACES)
def test_a_space_round_trips_through_its_dict(name):
    space = small_space(name, kernel_sizes=(3, 5))
    doc = json.loads(json.dumps(space.to_dict()))
    assert search_spaces.from_dict(doc) == space
    with pytest.raises(ValueError, match="name"):
        search_spaces.from_dict({"options": {}})


@pytest.mark.parametrize("bad", [[float("nan")], "357", []])
def test_bad_choices_are_refused(bad):
    with pytest.raises(ValueError, match="kernel_sizes"):
        search_spaces.get("mbv2", kernel_sizes=bad)


@pytest.mark.parametrize("name", SPACES)
def test_restrict_keeps_only_the_elastic_groups(name, rng):
    """Progressive shrinking's draws: ``x`` in the elastic groups, ``base`` in the rest."""
    space = search_spaces.get(name)
    base = space.encode(space.largest())
    for x in space.sample(20, rng):
        kernel_only = space.decode(space.restrict(x, base, ("kernel",)))
        largest, sampled = space.largest(), space.decode(x)
        assert [s.depth for s in kernel_only.stages] == [s.depth for s in largest.stages]
        assert [s.channels for s in kernel_only.stages] == [s.channels for s in largest.stages]
        assert kernel_only.resolution == largest.resolution
        offset = len(largest.stages) - space.n_stages  # MBConv's fixed first stage
        for got, drawn in zip(kernel_only.stages[offset:], sampled.stages[offset:], strict=True):
            for j, block in enumerate(got.blocks):
                # x's kernel where x has the block, else the largest; expand stays the largest.
                kernel = drawn.blocks[j].kernel_size if j < drawn.depth else max(space.kernel_sizes)
                assert block.kernel_size == kernel
                assert block.expand_ratio == max(space.expand_ratios or (1,))
        depth_too = space.decode(space.restrict(x, base, ("kernel", "depth")))
        assert [s.depth for s in depth_too.stages] == [s.depth for s in sampled.stages]
        assert [s.channels for s in depth_too.stages] == [s.channels for s in largest.stages]
        assert np.array_equal(space.restrict(x, base, space.GROUPS), x)
        assert np.array_equal(space.restrict(x, base, ()), base)
    with pytest.raises(ValueError, match=r"unknown variable groups \['kernels'\]"):
        space.restrict(base, base, ("kernels",))
