"""What a search hands back: the front's subnets as models, the most accurate of them and the
Feillet heuristic's subnet fine-tuned from their inherited weights (on the labels, optionally
distilled from the supernet's teacher subnet), each scored on validation and on the test split
that no step of the search has seen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from search_spaces import Arch

from .data import DataSplits
from .engine.loop import NATSearch, SearchResult
from .spec import FinetuneSpec
from .training.evaluate import SubnetEvaluator
from .training.train import evaluate, finetune

__all__ = ["FrontModel", "finetune_if_better", "finetunes_heuristic", "hand_back"]

# With ``heuristic="auto"``, the heuristic's subnet is fine-tuned when the chosen front
# subnets all have fewer parameters than this fraction of its own.
HEURISTIC_REACHED = 0.9


@dataclass
class FrontModel:
    """One subnet as handed back (a front subnet, or the heuristic's). Accuracies are fractions
    in 0..1; ``val_accuracy`` and ``test_accuracy`` are the exported weights', fine-tuned or
    inherited."""

    index: int  # into the archive
    arch: Arch
    model: nn.Module
    inherited_val_accuracy: float
    inherited_test_accuracy: float
    val_accuracy: float
    test_accuracy: float
    finetune_epochs: int  # in the exported weights: 0 when not fine-tuned, or not kept
    finetuned_val_accuracy: float | None = None  # after fine-tuning, kept or not


def hand_back(
    search: NATSearch, result: SearchResult, spec: FinetuneSpec, progress: bool = False
) -> tuple[list[FrontModel], FrontModel | None]:
    """The front's subnets, in front order, and the Feillet heuristic's subnet at the full
    budget when it is fine-tuned and not on the front (None otherwise).

    Each is extracted with BatchNorm recalibrated on the batches in-process evaluation uses (so
    any backend gives the same models). The ``spec.top`` most accurate front subnets and the
    heuristic's are then fine-tuned for ``spec.epochs``, and the fine-tuned weights kept only
    if they score higher on validation than the inherited ones (validation chooses, as it chose
    the front; the test split only scores). The heuristic's subnet is fine-tuned as
    ``spec.heuristic`` says; by default when the chosen front subnets stop short of its size,
    since inherited accuracy can undervalue the larger subnets of a briefly trained supernet
    (on CIFAR-10 a front once sat at half the budget), and it is the baseline a search must
    beat."""
    cfg, data, space = search.config, search.data, result.archive.space
    entries = result.archive.entries
    evaluator = SubnetEvaluator(data, cfg.bn_batches, cfg.batch_size, cfg.seed)
    test_batches = evaluator.batches(data.test)
    by_accuracy = sorted(result.front, key=lambda i: -entries[i].accuracy)
    chosen = set(by_accuracy[: spec.top]) if spec.epochs else set()
    seeds = [i for i, e in enumerate(entries) if e.source == "heuristic"]
    heuristic = max(seeds, key=lambda i: entries[i].params) if seeds and spec.epochs else None
    if heuristic is not None and finetunes_heuristic(
        spec.heuristic, [entries[i].params for i in chosen], entries[heuristic].params
    ):
        chosen.add(heuristic)
    else:
        heuristic = None
    teacher = None
    if chosen and spec.distill_weight > 0:
        teacher_arch = search.teacher()
        teacher = (
            evaluator.evaluate_one(search.supernet, teacher_arch)[1],
            teacher_arch.resolution,
        )

    def handed(i: int) -> FrontModel:
        arch = space.decode(entries[i].x)
        val, model = evaluator.evaluate_one(search.supernet, arch)
        test = evaluate(model, test_batches, arch.resolution)
        out = FrontModel(i, arch, model, val, test, val, test, 0)
        if i in chosen:
            tuned, kept = finetune_if_better(
                model,
                arch.resolution,
                data,
                evaluator.val_batches,
                val,
                spec,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                teacher=teacher,
                progress=progress,
            )
            out.finetuned_val_accuracy = tuned
            if kept:
                out.val_accuracy = tuned
                out.test_accuracy = evaluate(model, test_batches, arch.resolution)
                out.finetune_epochs = spec.epochs
        return out

    models = [handed(i) for i in result.front]
    off_front = heuristic is not None and heuristic not in result.front
    return models, handed(heuristic) if off_front else None


def finetunes_heuristic(mode: str, chosen_params: list[int], heuristic_params: int) -> bool:
    """Whether the hand-back fine-tunes the heuristic's subnet (``heuristic_params``
    parameters) beside front subnets of ``chosen_params``: ``mode`` "always", "never", or
    "auto": when they all have under ``HEURISTIC_REACHED`` times its parameters."""
    if mode != "auto":
        return mode == "always"
    return max(chosen_params, default=0) < HEURISTIC_REACHED * heuristic_params


def finetune_if_better(
    model: nn.Module,
    resolution: int,
    data: DataSplits,
    val_batches: list,
    val_accuracy: float,
    spec: FinetuneSpec,
    *,
    batch_size: int,
    seed: int,
    teacher: tuple[nn.Module, int] | None = None,
    progress: bool = False,
) -> tuple[float, bool]:
    """Fine-tune ``model`` (at ``resolution`` px) with ``spec``'s recipe, and keep the new
    weights only if they beat ``val_accuracy``, the current weights' score on ``val_batches``;
    otherwise restore the current weights. Returns (fine-tuned validation accuracy in 0..1,
    whether it was kept)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(
        model,
        data,
        resolution,
        spec.epochs,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        teacher=teacher,
        distill_weight=spec.distill_weight,
    )
    model.cpu()
    tuned = evaluate(model, val_batches, resolution)
    if tuned <= val_accuracy:
        model.load_state_dict(before)
    return tuned, tuned > val_accuracy
