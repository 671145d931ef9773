"""Budget-aware supernet training: the teacher, the anchor and the sampled subnets fit the
budget."""

import numpy as np
import pytest
import torch
from conftest import SPACES

import search_spaces
import supernets
from nat.data import load_dataset
from nat.engine.problem import Budgets
from nat.training.train import TrainConfig, train_supernet


@pytest.mark.parametrize("name", SPACES)
def test_teacher_is_the_largest_that_fits_a_multiple_of_the_budget(name):
    space = search_spaces.get(name)
    largest, smallest = (space.complexity(a, 10)[0] for a in (space.largest(), space.smallest()))
    assert Budgets(space, 10, largest).teacher(2.0) == space.largest()
    assert Budgets(space, 10, None).teacher(2.0) == space.largest()
    budget = (smallest + largest) / 4
    teacher = Budgets(space, 10, budget).teacher(2.0)
    params = space.complexity(teacher, 10)[0]
    assert budget < params <= 2 * budget  # uses the multiple, and keeps to it
    assert Budgets(space, 10, budget).teacher(0) == space.largest()  # 0: no budget awareness


@pytest.mark.parametrize("name", SPACES)
def test_anchor_is_the_largest_within_the_budget_or_the_smallest(name):
    space = search_spaces.get(name)
    largest, smallest = (space.complexity(a, 10)[0] for a in (space.largest(), space.smallest()))
    budget = (smallest + largest) / 4
    budgets = Budgets(space, 10, budget)
    anchor = budgets.anchor(1.0)
    params = space.complexity(anchor, 10)[0]
    assert smallest < params <= budget
    # a largest: growing any one choice leaves the budget
    x = space.encode(anchor)
    for gene in np.flatnonzero(x < space.upper):
        grown = x.copy()
        grown[gene] += 1
        grown = space.repair(grown[None])
        assert (grown[0] == x).all() or space.complexity(grown, 10)[0][0] > budget
    assert budgets.anchor(0) == space.smallest()  # 0: BigNAS's sandwich
    assert Budgets(space, 10, None).anchor(1.0) == space.smallest()
    assert budgets.largest() == anchor
    assert Budgets(space, 10, None).largest() == space.largest()  # the design's "largest"


def test_anchor_multiple_below_one_is_refused():
    from nat.spec import OptionError

    with pytest.raises(OptionError, match="anchor_multiple"):
        TrainConfig(anchor_multiple=0.5)


def test_teacher_fits_a_macs_budget_too():
    space = search_spaces.get("mbv2")
    macs = space.complexity(space.largest(), 10)[1]
    teacher = Budgets(space, 10, max_macs=macs / 4).teacher(1.5)
    assert space.complexity(teacher, 10)[1] <= 1.5 * macs / 4


def test_sampler_draws_only_subnets_within_the_multiple_of_the_budget():
    space = search_spaces.get("mbv2")
    smallest = space.complexity(space.smallest(), 10)[0]
    budgets = Budgets(space, 10, 2 * smallest)
    rng = np.random.default_rng(0)
    for multiple in (1.0, 1.5):
        params = [space.complexity(budgets.sampler(multiple)(rng), 10)[0] for _ in range(30)]
        assert max(params) <= multiple * 2 * smallest
        assert len(set(params)) > 10  # random, not one subnet
    assert max(params) > 2 * smallest  # the multiple widens the draw


def test_sampler_is_uniform_in_size_not_in_the_encoding():
    # Two widths: uniform draws in the encoding crowd the narrow width's sizes, far below
    # the budget.
    space = search_spaces.get("mbv2", resolutions=(16, 20, 24), width_mults=(0.25, 0.5))
    smallest, budget = space.complexity(space.smallest(), 10)[0], 400_000
    rng = np.random.default_rng(0)
    drawn = np.array(
        [space.complexity(Budgets(space, 10, budget).sampler(1.0)(rng), 10)[0] for _ in range(200)]
    )
    top = smallest + 0.75 * (budget - smallest)  # the quarter of sizes nearest the budget
    X = space.sample(4000, rng)
    params = space.complexity(X, 10)[0]
    uniform = params[params <= budget]
    assert drawn.max() <= budget
    assert np.mean(drawn > top) > 0.15  # about a quarter
    assert np.mean(drawn > top) > 2 * np.mean(uniform > top)


def test_training_distils_from_the_given_teacher(monkeypatch):
    space = search_spaces.get("resnet", resolutions=(12,), width_mults=(0.125, 0.25))
    data = load_dataset("digits", image_size=12, seed=0, subset=256)
    torch.manual_seed(0)
    net = supernets.build_supernet(space, data.num_classes)
    teacher = Budgets(space, 10, space.complexity(space.largest(), 10)[0] / 3).teacher(1.5)
    assert teacher != space.largest()
    active = []
    original = net.set_active
    monkeypatch.setattr(net, "set_active", lambda a: (active.append(a), original(a)))
    anchor = Budgets(space, 10, space.complexity(space.largest(), 10)[0] / 3).anchor(1.0)
    config = TrainConfig(epochs=1, batch_size=64, random_subnets=1, smallest_anchor=False)
    train_supernet(net, data, config, progress=False, teacher=teacher, anchor=anchor)
    steps = len(active) // 3  # teacher, anchor, one random subnet per step (+ one at the end)
    assert steps >= 2 and [active[3 * i] for i in range(steps)] == [teacher] * steps
    assert [active[3 * i + 1] for i in range(steps)] == [anchor] * steps
    assert space.largest() not in active and space.smallest() not in active
    # smallest_anchor: the smallest takes the random subnet's place, every step
    active.clear()
    config = TrainConfig(epochs=1, batch_size=64, random_subnets=1, smallest_anchor=True)
    train_supernet(net, data, config, progress=False, teacher=teacher, anchor=anchor)
    assert len(active) == 3 * steps + 1
    trained = [active[3 * i : 3 * i + 3] for i in range(steps)]
    assert trained == [[teacher, anchor, space.smallest()]] * steps


@pytest.mark.parametrize("name", SPACES)
def test_growing_back_only_adds_to_the_shrunk_teacher_and_keeps_to_the_multiple(name):
    space = search_spaces.get(name)
    largest, smallest = (space.complexity(a, 10)[0] for a in (space.largest(), space.smallest()))
    budgets = Budgets(space, 10, (smallest + largest) / 4)
    shrunk = space.encode(budgets.teacher(2.0))
    grown = space.encode(budgets.teacher(2.0, grow_back=True))
    assert (grown >= shrunk).all()
    assert space.complexity(space.decode(grown), 10)[0] <= 2 * budgets.limits["params"]
