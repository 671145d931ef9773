"""The final recipe's trainer (epochs or seconds, in slices) and the race between candidates:
synchronous successive halving at equal training time."""

import time
from functools import partial

import pytest
import torch
from conftest import small_space
from torch import nn

import supernets
from nat.data import load_dataset
from nat.race import race, race_cost, tie_margin
from nat.recipes import FinetuneSpec
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate
from nat.training.trainer import Trainer, measure_step_seconds

pytestmark = pytest.mark.clock  # times measured against each other

RECIPE = FinetuneSpec(lr=0.05, ema_decay=0.0, label_smoothing=0.0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=12, seed=0)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return supernets.build_static(small_space("mbv2", resolutions=(12,)).smallest(), 10)


class Slow(nn.Module):
    """A model that sleeps in every forward: the same network, trained slower per second."""

    def __init__(self, model: nn.Module, pause: float) -> None:
        super().__init__()
        self.model, self.pause = model, pause

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.pause)
        return self.model(x)


def test_an_epoch_schedule_trains_its_epochs_in_slices(digits):
    run = Trainer(_model(), digits, 12, RECIPE, epochs=2, batch_size=64, seed=0)
    run.train(until=0.5)
    assert run.epochs == pytest.approx(1, abs=1 / len(run.loader))
    assert 0.5 <= run.progress < 0.5 + 1 / len(run.loader)
    run.train()
    assert run.done and run.epochs == pytest.approx(2, abs=1 / len(run.loader))
    lr = run.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end
    model = run.finish()
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert evaluate(model, SubnetEvaluator.batches(digits.val), 12) > 0.5  # it learned


def test_a_seconds_schedule_ends_at_its_own_training_time(digits):
    # A long schedule against short steps, so that a busy machine's slow step cannot end it
    # within the first slice.
    run = Trainer(_model(), digits, 12, RECIPE, seconds=4.0, batch_size=64, seed=0)
    run.train(until=0.25)
    assert 1.0 <= run.seconds and not run.done
    time.sleep(0.5)  # time outside train() is not the schedule's
    assert run.progress == pytest.approx(run.seconds / 4.0)
    run.train()
    assert run.done and 4.0 <= run.seconds
    assert run.seconds_per_epoch > 0


def test_the_moving_average_and_the_mixing_recipe_train(digits):
    recipe = FinetuneSpec(lr=0.05, ema_decay=0.99, mixup=0.2, cutmix=1.0, augment="trivial")
    run = Trainer(_model(), digits, 12, recipe, epochs=3, batch_size=64, seed=0)
    run.train()
    averaged = run.evaluation_model()
    assert averaged is not run.model and not averaged.training
    model = run.finish()  # the average's weights, BatchNorm statistics included
    pairs = zip(averaged.state_dict().items(), model.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a.cpu(), b), name
    assert evaluate(model, SubnetEvaluator.batches(digits.val), 12) > 0.3


def test_a_schedule_needs_one_length():
    with pytest.raises(ValueError, match="epochs or as seconds"):
        Trainer(_model(), None, 12, RECIPE)
    with pytest.raises(ValueError, match="epochs or as seconds"):
        Trainer(_model(), None, 12, RECIPE, epochs=1, seconds=1)


def test_step_time_is_measured_on_a_copy(digits):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = measure_step_seconds(model, digits, 12, 64)
    slow = measure_step_seconds(Slow(model, 0.05), digits, 12, 64)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # a lower bound only: a busy machine slows the fast model too
    assert fast > 0 and slow >= 0.05


class Stub:
    """A race entrant whose score is a function of its schedule's progress."""

    def __init__(self, name: str, curve, epochs_per_second: float = 1.0) -> None:
        self.name, self.curve, self.progress, self.calls = name, curve, 0.0, []
        self.rate = epochs_per_second

    def train(self, until: float = 1.0, deadline=None) -> None:
        self.calls.append(until)
        self.progress = until

    @property
    def epochs(self) -> float:
        return self.progress * self.rate

    def record(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "seconds": self.progress}


def test_successive_halving_keeps_the_better_half_at_each_rung():
    # b starts slowest but ends best: a late bloomer that survives the first cut only.
    stubs = [
        Stub("a", lambda p: 0.5 + p),
        Stub("b", lambda p: 0.45 + 4 * p),
        Stub("c", lambda p: 0.2 + p),
        Stub("d", lambda p: 0.4 + p),
    ]
    winner, rungs = race(stubs, lambda s: s.curve(s.progress), first_rung=1 / 16)
    assert [r["fraction"] for r in rungs] == [1 / 16, 1 / 8]
    assert [[c["name"] for c in r["candidates"]] for r in rungs] == [list("abcd"), ["a", "b"]]
    assert stubs[winner].name == "b"
    assert stubs[2].calls == [1 / 16] and stubs[3].calls == [1 / 16]  # losers stop at once
    # the cost the planner reserves is what the losers trained
    assert race_cost(4, 1 / 16) == pytest.approx(2 / 16 + 1 / 8)
    assert race(stubs[:1], lambda s: 0.0, 0.5)[0] == 0  # one entrant: no race
    with pytest.raises(ValueError, match="first_rung"):
        race(stubs, lambda s: 0.0, 0.0)


def test_a_tie_within_sampling_noise_goes_to_the_candidate_with_more_epochs():
    # A rung of a CIFAR-10 race (seed 2 of docs section 7): at equal time the heuristic's
    # subnet had 2.35 epochs and 55.66 % validation, a slower searched one 1.30 epochs and
    # 55.82 %; 0.16 points on 5,000 images is noise, and the faster one should go on.
    def entrants():
        return [
            Stub("searched", lambda p: 0.5582, epochs_per_second=1.30),
            Stub("heuristic", lambda p: 0.5566, epochs_per_second=2.35),
        ]

    noise = partial(tie_margin, 5000)
    assert noise(0.5582) == pytest.approx(0.0195, abs=1e-4)
    assert tie_margin(90, 0.5) > 0.1 > tie_margin(90, 0.99)  # little told apart, unless sure
    runs = entrants()
    assert runs[race(runs, lambda s: s.curve(s.progress), 0.5, margin=noise)[0]].name == "heuristic"
    runs = entrants()
    assert runs[race(runs, lambda s: s.curve(s.progress), 0.5)[0]].name == "searched"  # no margin
    # Outside the margin, the score decides whatever the epochs.
    runs = [Stub("slow", lambda p: 0.60, 1.0), Stub("fast", lambda p: 0.55, 3.0)]
    assert runs[race(runs, lambda s: s.curve(s.progress), 0.5, margin=noise)[0]].name == "slow"


def test_the_race_keeps_the_candidate_that_trains_faster_per_second(digits):
    # The same network and start twice, one sleeping 300 ms per step: at equal training time
    # the fast one takes several times the steps, and the race must keep it.
    val = SubnetEvaluator.batches(digits.val)
    runs = [
        Trainer(Slow(_model(), 0.3), digits, 12, RECIPE, seconds=4.0, name="slow", seed=0),
        Trainer(_model(), digits, 12, RECIPE, seconds=4.0, name="fast", seed=0),
    ]

    def score(run: Trainer) -> float:
        return evaluate(run.evaluation_model(), val, 12)

    winner, rungs = race(runs, score, first_rung=0.5)
    slow, fast = rungs[0]["candidates"]
    assert fast["epochs"] > 2 * slow["epochs"]  # equal time, more epochs
    assert winner == 1 and fast["score"] > slow["score"]
