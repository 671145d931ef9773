"""Multi-exit subnets: exits computed as the prefix's analytic MACs say, thresholds that route
every image as they must, and bad exits named."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import SPACES
from torch import nn

import search_spaces
import supernets
from nat.data import load_dataset
from nat.multiexit import (
    NEVER,
    MultiExitLoss,
    default_exits,
    exit_costs,
    exit_outputs,
    fit_thresholds,
    route,
    simulate,
)
from nat.profile import profile
from nat.training.evaluate import SubnetEvaluator
from supernets.multiexit import MultiExitNet


class _Upto(nn.Module):
    """The multi-exit model run up to exit ``k``: what an image leaving there costs."""

    def __init__(self, model: MultiExitNet, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x, upto=self.k)


def _model(name: str, seed: int = 0, exits=None) -> MultiExitNet:
    space = search_spaces.get(name, resolutions=(16,), width_mults=(0.25, 0.5))
    arch = space.decode(space.sample(1, np.random.default_rng(seed))[0])
    torch.manual_seed(seed)
    net = supernets.build_static(arch, 10)
    return MultiExitNet(net, default_exits(arch) if exits is None else exits).eval()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16, seed=0)


@pytest.mark.parametrize("name", SPACES)
def test_exit_costs_are_the_profiled_macs_of_each_prefix(name):
    for seed in (0, 1):
        model = _model(name, seed)
        arch = model.net.arch
        costs = exit_costs(arch, model.exit_stages, model.exit_channels, 10)
        assert len(costs) == model.num_exits and (np.diff(costs) > 0).all()
        for k in range(model.num_exits):
            _, macs = profile(_Upto(model, k), arch.resolution)
            assert macs == costs[k], (name, seed, k)
        # The last exit is the network's own classifier, its output unchanged.
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            outputs = model(x)
            torch.testing.assert_close(outputs[-1], model.net(x))
            assert len(model(x, upto=0)) == 1


def test_thresholds_route_every_image(digits):
    model = _model("mbv2")
    arch = model.net.arch
    confidence, correct = exit_outputs(model, SubnetEvaluator.batches(digits.val), 16)
    n, exits = confidence.shape
    assert exits == model.num_exits and n == len(digits.val)
    assert ((confidence > 0) & (confidence <= 1)).all()
    costs = exit_costs(arch, model.exit_stages, model.exit_channels, 10)
    # θ = 0: every image leaves at the first exit; θ > 1: every image reaches the last.
    assert (route(confidence, [0.0] * (exits - 1)) == 0).all()
    assert (route(confidence, [NEVER] * (exits - 1)) == exits - 1).all()
    first = simulate(confidence, correct, [0.0] * (exits - 1), costs)
    assert first["expected_macs"] == costs[0] and first["fractions"][0] == 1
    assert first["accuracy"] == pytest.approx(correct[:, 0].mean())
    # Expected MACs are the mix of the exits' costs, by the fraction leaving at each.
    thresholds = np.quantile(confidence, 0.5, axis=0)[:-1]
    mixed = simulate(confidence, correct, thresholds, costs)
    leaving = route(confidence, thresholds)
    assert mixed["expected_macs"] == pytest.approx(costs[leaving].mean())
    assert mixed["accuracy"] == pytest.approx(correct[np.arange(n), leaving].mean())
    with pytest.raises(ValueError, match=f"give {exits - 1} thresholds"):
        route(confidence, [0.5])


def test_fitted_thresholds_spend_at_most_the_target():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, size=(500, 3))
    costs = np.array([100, 250, 400])
    spent = []
    for target in (100, 180, 260, 330, 399):
        thresholds = fit_thresholds(confidence, costs, target)
        macs = costs[route(confidence, thresholds)].mean()
        assert macs <= target + 1e-9
        spent.append(macs)
    assert spent == sorted(spent) and spent[-1] > 350  # the budget is used, not wasted
    np.testing.assert_array_equal(fit_thresholds(confidence, costs, 400), [NEVER, NEVER])
    with pytest.raises(ValueError, match="below the first exit's 100 MACs"):
        fit_thresholds(confidence, costs, 99)


def test_the_loss_sums_cross_entropies_and_distills_from_the_last_exit():
    torch.manual_seed(0)
    outputs = [torch.randn(4, 10) for _ in range(3)]
    labels = torch.tensor([0, 3, 5, 9])
    ce = sum(nn.functional.cross_entropy(o, labels) for o in outputs)
    torch.testing.assert_close(MultiExitLoss(distill_weight=0)(outputs, labels), ce)
    same = [outputs[-1].clone() for _ in range(3)]
    ce_same = 3 * nn.functional.cross_entropy(outputs[-1], labels)
    torch.testing.assert_close(MultiExitLoss()(same, labels), ce_same)
    assert MultiExitLoss()(outputs, labels) > ce


def test_exits_on_a_missing_stage_are_clear_errors():
    space = search_spaces.get("resnet", resolutions=(16,))
    net = supernets.build_static(space.smallest(), 10)
    with pytest.raises(ValueError, match="no stage 7 to put an exit after: .* 4 stages"):
        MultiExitNet(net, [1, 7])
    with pytest.raises(ValueError, match="stage 3 ends in the network's own classifier"):
        MultiExitNet(net, [3])
    with pytest.raises(ValueError, match="at least one stage"):
        MultiExitNet(net, [])
    with pytest.raises(ValueError, match="a positive width for each of the 2 exits"):
        MultiExitNet(net, [0, 1], exit_channels=[16])
    with pytest.raises(ValueError, match="upto must be an exit, 0 to 2"):
        MultiExitNet(net, [0, 1])(torch.zeros(1, 3, 16, 16), upto=3)
    one_stage = dataclasses.replace(space.smallest(), stages=space.smallest().stages[:1])
    with pytest.raises(ValueError, match="one-stage architecture has no stage before"):
        MultiExitNet(supernets.build_static(one_stage, 10), [0])
