import numpy as np
import pytest
import torch
from conftest import SPACES
from torch import nn

import search_spaces
import supernets
from nat.profile import profile
from supernets import ops

DYNAMIC = (
    ops.DynamicConv2d,
    ops.DynamicBatchNorm2d,
    ops.DynamicConvBN,
    ops.DynamicLinear,
    supernets.Supernet,
)


def _scramble(net: nn.Module, seed: int) -> None:
    """Give BatchNorm statistics and kernel transforms values other than their initial ones,
    so that a wrong slice or a skipped transform changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, ops.DynamicConv2d):
                for t in m.transform.values():
                    t.add_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.fixture(scope="module", params=SPACES)
def supernet(request):
    torch.manual_seed(0)
    net = supernets.build_supernet(search_spaces.get(request.param), num_classes=10)
    _scramble(net, 0)
    return net.eval()


def test_extracted_model_computes_what_the_supernet_computed(supernet):
    space = supernet.space
    X = np.vstack([space.sample(48, np.random.default_rng(1)), space.lower, space.upper])
    g = torch.Generator().manual_seed(0)
    for x in X:
        arch = space.decode(x)
        supernet.set_active(arch)
        images = torch.randn(2, 3, arch.resolution, arch.resolution, generator=g)
        model = supernet.extract()
        assert not model.training
        assert not any(isinstance(m, DYNAMIC) for m in model.modules())
        with torch.no_grad():
            expected = supernet(images)
            got = model(images)
        assert expected.shape == (2, 10)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _ofa_weight(whole: torch.Tensor, conv: ops.DynamicConv2d, kernel_size: int) -> torch.Tensor:
    """OFA's elastic kernel from one whole largest weight: centre crops, each through the
    transform of its size, from the largest down to ``kernel_size``."""
    weight = whole
    for size in reversed(conv.kernel_sizes[:-1]):
        if size < kernel_size:
            break
        start = (weight.shape[-1] - size) // 2
        crop = weight[:, :, start : start + size, start : start + size]
        weight = (crop.reshape(-1, size * size) @ conv.transform[str(size)]).reshape(crop.shape)
    return weight


def _elastic_convs(net: nn.Module) -> list[ops.DynamicConv2d]:
    return [
        m for m in net.modules() if isinstance(m, ops.DynamicConv2d) and len(m.kernel_sizes) > 1
    ]


@torch.no_grad()
def test_kernel_rings_compute_ofas_elastic_kernel(supernet):
    """The centre-and-rings storage computes what one whole largest weight does under OFA's
    rule, for every kernel size; a smaller kernel is the transformed crop, not the raw one."""
    for conv in _elastic_convs(supernet)[:6]:
        c_out, c_in = conv.weight.shape[:2]
        k_max, k_min = conv.kernel_sizes[-1], conv.kernel_sizes[0]
        whole = conv.active_weight(c_in, c_out, k_max)
        assert whole.shape[-1] == k_max
        start = (k_max - k_min) // 2
        torch.testing.assert_close(
            whole[:, :, start : start + k_min, start : start + k_min], conv.weight
        )
        for k in conv.kernel_sizes:
            torch.testing.assert_close(
                conv.active_weight(c_in, c_out, k), _ofa_weight(whole, conv, k)
            )
        raw_crop = whole[:, :, start : start + k_min, start : start + k_min]
        assert not torch.allclose(conv.active_weight(c_in, c_out, k_min), raw_crop)


@pytest.mark.parametrize("name", ["mbv2", "resnet"])
def test_state_dicts_with_the_whole_largest_weight_still_load(name):
    """Checkpoints saved before the rings held each multi-kernel layer's whole largest
    weight under ``weight``: loading one gives the same subnets."""
    space = search_spaces.get(name, resolutions=(16,))
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10)
    _scramble(net, 1)
    old = net.state_dict()
    for conv_name, conv in net.named_modules():
        if isinstance(conv, ops.DynamicConv2d) and len(conv.kernel_sizes) > 1:
            c_out, c_in = conv.weight.shape[:2]
            with torch.no_grad():
                old[f"{conv_name}.weight"] = conv.active_weight(c_in, c_out, conv.kernel_sizes[-1])
            for ring in conv.rings:
                del old[f"{conv_name}.rings.{ring}"]
    torch.manual_seed(1)
    loaded = supernets.build_supernet(space, 10)
    loaded.load_state_dict(old)
    x = torch.randn(2, 3, 16, 16)
    for arch in (
        space.smallest(),
        space.largest(),
        space.decode(space.sample(1, np.random.default_rng(0))[0]),
    ):
        for model in (net, loaded):
            model.set_active(arch)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x), net.eval()(x))


def test_a_small_kernel_leaves_the_outer_rings_without_gradient():
    """What makes a 3x3 subnet of a {3, 5} ResNet train at torchvision's speed: its backward
    reaches the centre and the transform only, so the optimiser skips the 5x5 ring."""
    space = search_spaces.get("resnet", resolutions=(16,), width_mults=(0.25,))
    net = supernets.build_supernet(space, 10)
    arch = space.smallest()
    assert all(b.kernel_size == 3 for st in arch.stages for b in st.blocks)
    net.set_active(arch)
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    convs = _elastic_convs(net)
    used = [c for c in convs if c.weight.grad is not None]
    assert used
    for conv in used:
        assert all(ring.grad is None for ring in conv.rings.values())
        assert conv.transform["3"].grad is not None
    net.zero_grad(set_to_none=True)
    net.set_active(space.largest())
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    assert any(ring.grad is not None for c in convs for ring in c.rings.values())


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("resolution", [16, 32, 37])
def test_analytic_complexity_matches_a_real_forward(name, resolution):
    space = search_spaces.get(name, resolutions=(resolution,))
    for x in space.sample(6, np.random.default_rng(resolution)):
        arch = space.decode(x)
        model = supernets.build_static(arch, num_classes=10)
        params, macs = profile(model, resolution)
        expected_params, expected_macs = space.complexity(arch, 10)
        assert params == expected_params
        assert abs(macs - expected_macs) <= 0.01 * expected_macs


@pytest.mark.parametrize("stem", search_spaces.STEMS)
@pytest.mark.parametrize("name", SPACES)
def test_static_model_params_match_analytic_for_every_stem(name, stem):
    space = search_spaces.get(name, stem=stem)
    arch = space.largest()
    params, macs = profile(supernets.build_static(arch, 1000), arch.resolution)
    assert (params, macs) == space.complexity(arch, 1000)


def test_supernet_rejects_architectures_outside_its_space():
    net = supernets.build_supernet(search_spaces.get("resnet"), 10)
    with pytest.raises(ValueError, match="not one of the space's choices"):
        net.set_active(search_spaces.get("resnet", kernel_sizes=(7,)).largest())
    with pytest.raises(ValueError, match="family 'mbv2'"):
        net.extract(search_spaces.get("mbv2").largest())


def test_supernets_hold_no_shared_state():
    space = search_spaces.get("mbv2")
    a, b = supernets.build_supernet(space, 10), supernets.build_supernet(space, 10)
    a.set_active(space.smallest())
    assert b.get_active() == space.largest()
    assert a.get_active() == space.smallest()


def test_recalibrate_bn_sets_statistics_from_the_data():
    space = search_spaces.get("mbv2", resolutions=(16,))
    model = supernets.build_static(space.smallest(), 10)
    images = torch.randn(64, 3, 16, 16) * 3 + 2
    loader = [(images[i : i + 16], None) for i in range(0, 64, 16)]
    model.eval()
    supernets.recalibrate_bn(model, loader, batches=4)
    assert not model.training
    mean = model.stem.bn.running_mean
    expected = model.stem.conv(images).mean((0, 2, 3))
    torch.testing.assert_close(mean, expected.detach(), atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="empty loader"):
        supernets.recalibrate_bn(model, [], batches=4)


def test_cached_eval_weights_follow_training_updates():
    space = search_spaces.get("resnet", resolutions=(16,), width_mults=(0.125, 0.25))
    net = supernets.build_supernet(space, 10)
    arch = space.smallest()
    net.set_active(arch)
    images = torch.randn(4, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        before = net(images)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net(images).square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = net(images)
        expected = net.extract(arch)(images)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize("name", ["mbv2", "resnet"])
def test_zero_init_residual_makes_extra_blocks_the_identity(name):
    """BigNAS's zero-initialised last BatchNorm γ: at initialisation a subnet one block deeper
    computes exactly what the shallower one computes."""
    space = search_spaces.get(name, resolutions=(16,))
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10).train()  # batch statistics: activations O(1)
    shallow = space.encode(space.smallest())
    deeper = shallow.copy()
    deeper[space.variable_names.index("depth1")] += 1
    x = torch.randn(4, 3, 16, 16)

    @torch.no_grad()
    def logits(encoding):
        net.set_active(space.decode(space.repair(encoding)))
        return net(x)

    assert (logits(shallow) - logits(deeper)).abs().max() > 1e-3  # the plain init differs
    net.zero_init_residual()
    torch.testing.assert_close(logits(shallow), logits(deeper), rtol=0, atol=0)


def test_sorting_hidden_channels_keeps_the_function_and_puts_the_important_first():
    """OFA's channel sorting: the largest subnet computes the same after it, and every
    block's hidden channels are then in falling importance (L1 norm of the projection)."""
    space = search_spaces.get("mbv2", resolutions=(16,), width_mults=(0.5,))
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10).train()  # batch statistics: activations O(1)
    x = torch.randn(4, 3, 16, 16)
    narrow = space.encode(space.largest())
    narrow[space._expand] = 0  # the smallest expand ratio: only the first hidden channels
    narrow = space.decode(narrow)

    @torch.no_grad()
    def logits(arch):
        net.set_active(arch)
        return net(x)

    full, cut = logits(space.largest()), logits(narrow)
    moved = net.sort_channels()
    assert moved  # MBConv blocks with an expansion were sorted
    torch.testing.assert_close(logits(space.largest()), full)
    assert not torch.allclose(logits(narrow), cut)  # the narrow subnet now keeps other channels
    for stage in net.stages:
        for block in stage:
            if block.expand is not None:
                importance = block.project.conv.weight.abs().sum(dim=(0, 2, 3))
                assert torch.all(importance[:-1] >= importance[1:])


def test_synced_batch_norm_in_one_process_computes_what_plain_batch_norm_does(tmp_path):
    """The statistics summed over a group of one are the plain ones: outputs, gradients and
    running statistics agree, for the whole layer and for a slice of its channels."""
    import torch.distributed as dist

    from supernets.ops import DynamicBatchNorm2d

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        for channels in (8, 5):
            results = []
            for synced in (False, True):
                torch.manual_seed(0)
                bn = DynamicBatchNorm2d(8)
                torch.nn.init.uniform_(bn.weight)
                torch.nn.init.uniform_(bn.bias, -1, 1)
                bn.synced = synced
                x = (torch.randn(16, channels, 5, 5) * 3 + 1).requires_grad_()
                y = bn(x.contiguous(memory_format=torch.channels_last))
                (y * torch.randn_like(y)).sum().backward()
                results.append(
                    [y, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]
                )
            for plain, synced in zip(*results, strict=True):
                torch.testing.assert_close(synced, plain, atol=2e-5, rtol=1e-5)
    finally:
        dist.destroy_process_group()
