"""Racing candidate models to a deadline: synchronous successive halving (Jamieson &
Talwalkar 2016; the rule of Hyperband's inner loop).

Every candidate holds its whole schedule (:class:`nat.training.trainer.Trainer`), so a
candidate that survives simply carries on: the race spends time only on the losers. All
candidates train to the same fraction of their schedules, the best ``1 / reduction_factor``
by validation go on to ``reduction_factor`` times that fraction, and so on until one is left.
With schedules in seconds, a rung is equal wall time, so a candidate that trains faster gets
more epochs for it: its measured epoch time is part of the decision.

Written here rather than taken from Optuna's ``SuccessiveHalvingPruner`` or Ray Tune's
``ASHAScheduler``: both are asynchronous (ASHA), so with candidates trained in turns in one
process the first to report at a rung is promoted against itself alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .training.trainer import Trainer

__all__ = ["race", "race_cost", "tie_margin"]


def race(
    trainers: Sequence[Trainer],
    score: Callable[[Trainer], float],
    first_rung: float,
    reduction_factor: int = 2,
    deadline: float | None = None,
    log: Callable[[str], None] | None = None,
    margin: Callable[[float], float] | None = None,
) -> tuple[int, list[dict]]:
    """Successive halving over ``trainers``: each trains to ``first_rung`` of its schedule
    (a fraction, 0..1), is scored with ``score(trainer)`` (higher is better; e.g. validation
    accuracy of ``trainer.evaluation_model()``), and the best ``ceil(n / reduction_factor)``
    go on to ``first_rung * reduction_factor``, until one is left. ``deadline``
    (``time.perf_counter()`` seconds) stops training early, whatever the rung.

    Scores within ``margin(best)`` of a rung's best score are a tie (e.g. :func:`tie_margin`,
    sampling noise), and a tie goes to the candidate with the most epochs: at equal time, the
    faster one, with more of its schedule still to come. Without a margin, exact ties go to
    the earlier trainer.

    Returns (the survivor's index, one record per rung: its fraction and each live
    candidate's score, epochs and seconds)."""
    if not trainers:
        raise ValueError("a race needs at least one candidate")
    if reduction_factor < 2:
        raise ValueError(f"reduction_factor must be at least 2, got {reduction_factor}")
    if not 0 < first_rung <= 1:
        raise ValueError(f"first_rung must be in (0, 1], got {first_rung}")
    alive = list(range(len(trainers)))
    rungs: list[dict] = []
    fraction = first_rung
    while len(alive) > 1:
        scores = {}
        for i in alive:
            trainers[i].train(until=fraction, deadline=deadline)
            scores[i] = float(score(trainers[i]))
        rungs.append(
            {
                "fraction": fraction,
                "candidates": [
                    {"index": i, "score": scores[i], **trainers[i].record()} for i in alive
                ],
            }
        )
        keep = math.ceil(len(alive) / reduction_factor)
        ranked = sorted(alive, key=_ranking(scores, trainers, margin))
        alive = sorted(ranked[:keep])
        if log is not None:
            text = ", ".join(f"{trainers[i].name} {scores[i]:.2%}" for i in ranked)
            log(
                f"race at {fraction:.0%} of the schedule: {text}; "
                f"{', '.join(trainers[i].name for i in alive)} go on"
            )
        fraction = min(1.0, fraction * reduction_factor)
    return alive[0], rungs


def _ranking(
    scores: dict[int, float], trainers: Sequence[Trainer], margin: Callable[[float], float] | None
):
    """The sort key of a rung: candidates within ``margin(best)`` of the best first, the one
    with the most epochs foremost, then the rest by score; the index last."""
    best = max(scores.values())
    band = margin(best) if margin is not None else 0.0

    def key(i: int) -> tuple:
        tied = scores[i] >= best - band
        return (not tied, -trainers[i].epochs if tied and band > 0 else 0.0, -scores[i], i)

    return key


def tie_margin(samples: int, accuracy: float, confidence_z: float = 1.96) -> float:
    """The smallest difference from ``accuracy`` that a two-proportion test on ``samples``
    validation images tells apart at ``confidence_z`` (1.96: 95 %):
    ``z * sqrt(2 * p * (1 - p) / samples)``, 0.0195 on 5,000 images at 56 %. Paired scores
    on the same images vary less, so the margin is conservative."""
    p = min(max(accuracy, 0.0), 1.0)
    return confidence_z * math.sqrt(2 * p * (1 - p) / max(1, samples))


def race_cost(candidates: int, first_rung: float, reduction_factor: int = 2) -> float:
    """The schedule fractions spent on the losers of a race of ``candidates``: the race's cost
    in units of one whole schedule (the survivor's own training is not counted)."""
    cost, alive, fraction = 0.0, candidates, first_rung
    while alive > 1:
        keep = math.ceil(alive / reduction_factor)
        cost += (alive - keep) * fraction
        alive, fraction = keep, min(1.0, fraction * reduction_factor)
    return cost
