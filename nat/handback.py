"""What a search hands back: a front of trained models spread over the budget.

By default three: the front's best subnet at about 1/4 and 1/2 of the budget, and the model
at the full budget chosen by a race (:mod:`nat.race`) among the front's most accurate
subnets and the Feillet heuristic's. Each starts from its inherited weights and trains with
the final recipe (:class:`nat.recipes.FinetuneSpec`), for ``epochs`` epochs or, under a time
limit, for the seconds the planner gives it: every model the same number of epochs by its
measured epoch time. Validation chooses (the race, and whether trained weights beat the
inherited ones); the test split only scores. In the race, validation scores closer than
sampling noise are a tie that the faster candidate wins: on CIFAR-10 at 300k, a 0.16-point
lead at 1/16 of the schedule sent a subnet at 21 s an epoch through in place of the
heuristic's at 11 s; it won, and ended at 76.4 % test, where the heuristic's reached 78.9-79.9 %
(docs/benchmarks.md, section 7)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from search_spaces import Arch
from supernets import build_static

from .engine.loop import NATSearch, SearchResult
from .planner import FIRST_RUNG, plan_final
from .race import race, tie_margin
from .recipes import FinetuneSpec
from .training.evaluate import SubnetEvaluator
from .training.train import evaluate
from .training.trainer import Trainer, measure_step_seconds

__all__ = ["FrontModel", "choose_targets", "hand_back"]


@dataclass
class FrontModel:
    """One handed-back model. Accuracies are fractions in 0..1; ``val_accuracy`` and
    ``test_accuracy`` are the exported weights' (trained, or inherited when training did not
    beat them on validation)."""

    index: int  # into the archive
    arch: Arch
    model: nn.Module
    target: float  # the size it stands for, in the budget's metric
    inherited_val_accuracy: float
    inherited_test_accuracy: float
    val_accuracy: float
    test_accuracy: float
    epochs: float = 0.0  # of training in the exported weights: 0 when inherited
    seconds: float = 0.0  # of training, kept or not
    trained_val_accuracy: float | None = None  # after training, kept or not
    race: list[dict] = field(default_factory=list)  # the race it won, rung by rung

    @property
    def trained(self) -> bool:
        return self.epochs > 0


def choose_targets(
    sizes: np.ndarray, accuracy: np.ndarray, front: list[int], budget: float, count: int
) -> list[tuple[float, int]]:
    """(target size, archive index) for the ``count - 1`` smaller models of a handed-back
    front: targets ``budget / 2^(count-1)``, ..., ``budget / 2``, each taking the most
    accurate ``front`` subnet within it (the smallest when none is), each subnet once."""
    chosen: list[tuple[float, int]] = []
    by_size = sorted(front, key=lambda i: sizes[i])
    for j in range(count - 1, 0, -1):
        target = budget / 2**j
        within = [i for i in by_size if sizes[i] <= target and i not in {c for _, c in chosen}]
        pool = within or [i for i in by_size if i not in {c for _, c in chosen}][:1]
        if pool:
            chosen.append((target, max(pool, key=lambda i: (accuracy[i], sizes[i]))))
    return chosen


def _candidates(
    result: SearchResult, sizes: np.ndarray, floor: float, taken: set[int], n: int
) -> list[int]:
    """The race's entrants: the heuristic's subnet at the full budget, then the front's most
    accurate subnets larger than ``floor`` (the next smaller target) not handed back already.
    A subnet at or below ``floor`` would only repeat a smaller slot, and early in a race the
    smallest subnets lead because they take the most steps, not because they end higher (on
    CIFAR-10 at 300k a 138k subnet led the 296k heuristic's at 1/8 of the schedule, 46.2
    against 45.1 % validation, and ended at 70.4 % test; the 296k one reached 77.0 %)."""
    entries = result.archive.entries
    seeds = [i for i, e in enumerate(entries) if e.source == "heuristic"]
    out = [max(seeds, key=lambda i: sizes[i])] if seeds else []
    for i in sorted(result.front, key=lambda i: -entries[i].accuracy):
        if len(out) >= n:
            break
        if i not in taken and i not in out and sizes[i] > floor:
            out.append(i)
    return out[:n] or sorted(result.front, key=lambda i: -entries[i].accuracy)[:1]


def hand_back(
    search: NATSearch,
    result: SearchResult,
    spec: FinetuneSpec,
    *,
    seconds: float | None = None,
    deadline: float | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    heuristic_only: bool = False,
    fresh_weights: bool = False,
) -> list[FrontModel]:
    """The handed-back models, smallest target first, the raced one last.

    ``seconds``: the time for all training (race included), planned across the models by
    their measured epoch times; None trains each for ``spec.epochs`` epochs. ``deadline``
    (``time.perf_counter()`` seconds) guards the whole run: no training past it.
    ``heuristic_only``: the heuristic's subnets only, without a teacher (a plan with the
    "heuristic" strategy: no search, no supernet training), each from fresh weights with
    ``fresh_weights`` (no source supernet to inherit from)."""
    began = time.perf_counter()
    cfg, data, archive = search.config, search.data, result.archive
    entries = archive.entries
    metric = next(iter(search.budgets.constrained), cfg.metrics[0])
    values = search.budgets.values(archive.X)[metric]
    budget = search.budgets.limits[metric] or float(values.max())
    evaluator = SubnetEvaluator(data, cfg.bn_batches, cfg.batch_size, cfg.seed, device=device)
    test_batches = evaluator.batches(data.test)
    if heuristic_only:  # the heuristic's subnets, the largest within each target
        # The space's smallest stands in for a seed it equals (the archive holds it once).
        seeds = [i for i, e in enumerate(entries) if e.source in ("heuristic", "smallest")]
        entrants = [max(seeds, key=lambda i: values[i])]
        seeds = [i for i in seeds if i not in entrants]
        smaller = choose_targets(values, values, seeds, budget, spec.front_size)
    else:
        smaller = choose_targets(values, archive.accuracy, result.front, budget, spec.front_size)
        taken = {i for _, i in smaller}
        floor = max((t for t, _ in smaller), default=0.0)
        entrants = _candidates(result, values, floor, taken, spec.race_size)
    say = log or (lambda text: None)

    def inherited(i: int, target: float) -> FrontModel:
        arch = archive.space.decode(entries[i].x)
        if fresh_weights:
            torch.manual_seed(cfg.seed)
            model = build_static(arch, search.supernet.num_classes)
            val = evaluate(model, evaluator.val_batches, arch.resolution)
        else:
            val, model = evaluator.evaluate_one(search.supernet, arch)
        test = evaluate(model, test_batches, arch.resolution)
        return FrontModel(i, arch, model, target, val, test, val, test)

    if spec.epochs == 0 and seconds is None:  # inherited weights only: the most accurate entrant
        best = max(entrants, key=lambda i: entries[i].accuracy)
        return [inherited(i, t) for t, i in smaller] + [inherited(best, budget)]
    teacher = None
    if spec.distill_weight > 0 and not heuristic_only:
        arch = search.teacher()
        teacher = (evaluator.evaluate_one(search.supernet, arch)[1], arch.resolution)
    scored = time.perf_counter()
    front = [inherited(i, t) for t, i in smaller]
    racers = [inherited(i, budget) for i in entrants]
    # One model's scoring (extraction, validation and test): the race scores its entrants
    # on validation after each rung, and every trained model is scored again at the end.
    scoring = (time.perf_counter() - scored) / (len(front) + len(racers))

    def trainer(m: FrontModel, length: dict, name: str) -> Trainer:
        return Trainer(
            copy.deepcopy(m.model),  # the inherited weights stay, should training not beat them
            data,
            m.arch.resolution,
            spec,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            device=device,
            teacher=teacher,
            name=name,
            progress=progress,
            **length,
        )

    lengths: list[dict]
    if seconds is None:
        lengths = [{"epochs": spec.epochs}] * (len(front) + 1)
    else:

        def epoch_seconds(m: FrontModel) -> float:
            step = measure_step_seconds(m.model, data, m.arch.resolution, cfg.batch_size, device)
            return step * (len(data.train) // cfg.batch_size or 1)

        front_epochs = [epoch_seconds(m) for m in front]
        rescoring = (len(racers) * 1.5 + len(front) + 1) * scoring
        left = seconds - (time.perf_counter() - began) - rescoring
        if deadline is not None:
            left = min(left, deadline - time.perf_counter() - rescoring)
        plan = plan_final(max(1.0, left), front_epochs, len(racers), FIRST_RUNG)
        say(
            f"final training: {plan.top:.0f} s for the model at the full budget (its race's "
            f"losers about {plan.race:.0f} s more), then {plan.epochs:.1f} epochs for each "
            "smaller one (" + ", ".join(f"{s:.0f} s" for s in plan.front) + ")"
        )
        lengths = [{"seconds": s} for s in plan.front] + [{"seconds": plan.top}]

    def finish(m: FrontModel, run: Trainer) -> FrontModel:
        model = run.finish()
        m.seconds = run.seconds
        m.trained_val_accuracy = evaluate(model, evaluator.val_batches, m.arch.resolution)
        if m.trained_val_accuracy > m.inherited_val_accuracy:
            m.model, m.val_accuracy, m.epochs = model, m.trained_val_accuracy, run.epochs
            m.test_accuracy = evaluate(model, test_batches, m.arch.resolution)
        return m

    # The model at the full budget first: it is the one most users deploy, so a machine
    # slower than measured shortens the smaller ones' schedules, not its.
    runs = [
        trainer(m, lengths[-1], f"{entries[m.index].source} {entries[m.index].params:,}")
        for m in racers
    ]

    def score(run: Trainer) -> float:
        return evaluate(run.evaluation_model(), evaluator.val_batches, run.resolution)

    margin = partial(tie_margin, len(data.val))
    winner, rungs = race(runs, score, FIRST_RUNG, deadline=deadline, log=say, margin=margin)
    for rung in rungs:
        for c in rung["candidates"]:
            c["entry"] = entrants[c["index"]]
    runs[winner].train(deadline=deadline)
    top = finish(racers[winner], runs[winner])
    top.race = rungs
    out = []
    planned_left = sum(length.get("seconds", 0.0) for length in lengths[:-1])
    for k, (m, length) in enumerate(zip(front, lengths[:-1], strict=True)):
        if "seconds" in length and deadline is not None and planned_left > 0:
            # What is left before the deadline, less the scoring still to come, shared as
            # planned.
            share = length["seconds"] / planned_left
            planned_left -= length["seconds"]
            room = (deadline - time.perf_counter() - (len(front) - k) * scoring) * share
            length = {"seconds": max(1.0, min(length["seconds"] * 1.25, room))}
        run = trainer(m, length, f"{entries[m.index].params:,} at 1/{budget / m.target:.0f}")
        run.train(deadline=deadline)
        out.append(finish(m, run))
    return out + [top]
