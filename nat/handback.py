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

__all__ = ["FrontModel", "finetune_if_better", "hand_back"]


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
    budget when it is not on the front (None otherwise, or without fine-tuning).

    Each is extracted with BatchNorm recalibrated on the batches in-process evaluation uses (so
    any backend gives the same models). The ``spec.top`` most accurate front subnets and the
    heuristic's are then fine-tuned for ``spec.epochs``, and the fine-tuned weights kept only
    if they score higher on validation than the inherited ones (validation chooses, as it chose
    the front; the test split only scores). The heuristic's subnet is fine-tuned because
    inherited accuracy undervalues the larger subnets of a briefly trained supernet (on
    CIFAR-10 the front sat at half the budget), and it is the baseline a search must beat."""
    cfg, data, space = search.config, search.data, result.archive.space
    entries = result.archive.entries
    evaluator = SubnetEvaluator(data, cfg.bn_batches, cfg.batch_size, cfg.seed)
    test_batches = evaluator.batches(data.test)
    by_accuracy = sorted(result.front, key=lambda i: -entries[i].accuracy)
    chosen = set(by_accuracy[: spec.top]) if spec.epochs else set()
    seeds = [i for i, e in enumerate(entries) if e.source == "heuristic"]
    heuristic = max(seeds, key=lambda i: entries[i].params) if seeds and spec.epochs else None
    if heuristic is not None:
        chosen.add(heuristic)
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
