"""The time planner: a pure function of the limit and the measured step times."""

import dataclasses
import math

import pytest

from nat.planner import (
    EXPORT_MARGIN,
    EXPORT_SECONDS,
    FIRST_RUNG,
    REPORT_SECONDS,
    TOP_SHARE,
    RunClock,
    StepTimes,
    plan_final,
    plan_run,
)
from nat.race import race_cost

TIMES = StepTimes(pretrain_epoch=200.0, evaluation=4.0)


def _plan(limit=1800.0, spent=30.0, times=TIMES, **extra):
    options = dict(pretrain_share=0.3, search_share=0.15, models=3, onnx=True)
    return plan_run(limit, spent, times, **(options | extra))


def test_the_split_is_deterministic_and_adds_up_to_the_limit():
    plan = _plan()
    assert plan == _plan()  # the same measurements, the same plan
    reserve = 3 * EXPORT_SECONDS["onnx"] + REPORT_SECONDS
    assert plan.reserve == reserve
    available = 1800 - 30 - reserve
    assert plan.pretrain == pytest.approx(0.3 * available)
    assert plan.search == pytest.approx(0.15 * available)
    assert plan.spent + plan.pretrain + plan.search + plan.final + plan.reserve == pytest.approx(
        1800
    )
    assert plan.pretrain_epochs == pytest.approx(plan.pretrain / 200)


def test_the_search_is_sized_by_the_measured_evaluation_time():
    plan = _plan()
    fixed = 5
    # the design of experiments in full, then iterations with adaptation within the share
    assert plan.doe_size == 16
    assert plan.iterations >= 1
    archive = fixed + plan.doe_size
    cost = (fixed + plan.doe_size) * 4.0
    for i in range(plan.iterations):
        cost += 8 * 4.0 + 6.0 + (archive + 8 * i) * 4.0 * (plan.adapt_seconds > 0)
    cost += plan.iterations * plan.adapt_seconds
    assert cost <= plan.search + 1e-6
    # evaluations ten times as slow: a smaller design of experiments, fewer iterations
    slow = _plan(times=StepTimes(pretrain_epoch=200.0, evaluation=40.0))
    assert slow.doe_size < plan.doe_size and slow.iterations <= plan.iterations
    # no adaptation asked for: iterations only evaluate
    plain = _plan(adapt=False)
    assert plain.adapt_seconds == 0 and plain.iterations >= plan.iterations


def test_a_run_from_a_trained_checkpoint_gives_pre_training_time_to_the_rest():
    plan = _plan(pretrain=False)
    assert plan.pretrain == 0 and plan.final > _plan().final


def _top_epochs(plan, final_epoch, race_size=4):
    return TOP_SHARE * plan.final / (1 + race_cost(race_size, FIRST_RUNG)) / final_epoch


def test_auto_searches_only_when_the_model_at_the_budget_still_gets_its_epochs():
    def auto(final_epoch, pretrain_epoch=200.0, **extra):
        times = StepTimes(pretrain_epoch=pretrain_epoch, evaluation=4.0, final_epoch=final_epoch)
        options = dict(strategy="auto", final_epochs=60, race_size=4)
        return _plan(times=times, **(options | extra))

    searched = _plan(strategy="search")
    # 1 s epochs: the search's plan leaves the model at the budget hundreds of epochs
    fast = auto(1.0)
    assert fast.strategy == "search" and fast.pretrain == searched.pretrain
    assert _top_epochs(fast, 1.0) >= 60
    # 20 s epochs: after a search it would get about 19; the heuristic's subnets get it all
    slow = auto(20.0)
    assert _top_epochs(searched, 20.0) < 60
    assert slow.strategy == "heuristic" and "--final-epochs 60" in slow.reason
    assert slow.pretrain == 0 and slow.iterations == 0 and slow.doe_size == 0
    assert slow.search == pytest.approx(5 * 4.0)  # the seeds' evaluations, for the archive
    assert slow.final == pytest.approx(1800 - 30 - slow.reserve - slow.search)
    # final_epochs 0 never gives up the search for the final training's sake
    assert auto(20.0, final_epochs=0).strategy == "search"
    # a supernet that would train for less than two epochs is not searched either
    short = auto(1.0, pretrain_epoch=400.0)
    assert short.strategy == "heuristic" and "1.3 epochs" in short.reason
    # ... unless it starts trained (a checkpoint): then pre-training does not count
    assert auto(1.0, pretrain=False).strategy == "search"


def test_a_strategy_given_is_kept_whatever_the_measurements():
    times = StepTimes(pretrain_epoch=200.0, evaluation=4.0, final_epoch=20.0)
    assert _plan(times=times, strategy="search", final_epochs=60).strategy == "search"
    fast = StepTimes(pretrain_epoch=200.0, evaluation=4.0, final_epoch=1.0)
    forced = _plan(times=fast, strategy="heuristic")
    assert forced.strategy == "heuristic" and forced.pretrain == 0
    assert "--strategy heuristic" in forced.reason
    with pytest.raises(ValueError, match="unknown strategy"):
        _plan(strategy="fastest")


def test_a_limit_too_short_is_an_error_naming_what_it_needs():
    with pytest.raises(ValueError, match="needs at least"):
        _plan(limit=60.0)


def test_final_training_gives_the_budget_model_its_share_and_the_rest_equal_epochs():
    final = plan_final(1000.0, [10.0, 20.0], candidates=4, first_rung=1 / 16, top_share=0.6)
    waste = race_cost(4, 1 / 16)
    assert waste == pytest.approx(2 / 16 + 1 / 8)  # two losers at 1/16, one at 1/8
    assert final.top + final.race == pytest.approx(600.0)
    assert final.race == pytest.approx(final.top * waste)
    assert final.front == pytest.approx((final.epochs * 10, final.epochs * 20))
    assert sum(final.front) + final.top + final.race == pytest.approx(1000.0)
    alone = plan_final(1000.0, [], candidates=1, first_rung=1 / 16)
    assert alone.top == pytest.approx(1000.0) and alone.race == 0 and alone.front == ()


def test_a_measured_export_is_what_the_run_keeps_back():
    measured = _plan(times=dataclasses.replace(TIMES, export=2.0))
    assert measured.reserve == pytest.approx(3 * EXPORT_MARGIN * 2.0 + REPORT_SECONDS)
    # what the guess for three ONNX exports kept back goes to the stages when they are timed
    guessed = _plan()
    gained = sum(
        getattr(measured, k) - getattr(guessed, k) for k in ("pretrain", "search", "final")
    )
    assert gained == pytest.approx(guessed.reserve - measured.reserve)
    assert measured.final > guessed.final


def test_step_times_must_be_positive():
    with pytest.raises(ValueError, match="evaluation"):
        StepTimes(pretrain_epoch=1.0, evaluation=0.0)
    with pytest.raises(ValueError, match="pretrain_epoch"):
        StepTimes(pretrain_epoch=math.nan, evaluation=1.0)
    with pytest.raises(ValueError, match="export"):
        StepTimes(pretrain_epoch=1.0, evaluation=1.0, export=-1.0)


def test_the_clock_records_stages_that_add_up_to_the_wall_time():
    clock = RunClock(100.0, start=0.0)
    assert clock.deadline == 100.0
    clock = RunClock(None)
    clock.begin("a")
    clock.begin("b")
    clock.end()
    assert set(clock.stages) == {"a", "b"}
    assert sum(clock.stages.values()) <= clock.elapsed()
    assert clock.left() is None and "elapsed" in clock.status()
