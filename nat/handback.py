"""What a search hands back: the front's subnets as models, the most accurate of them
fine-tuned from their inherited weights (on the labels, optionally distilled from the
supernet's teacher subnet), each scored on validation and on the test split that no step of
the search has seen."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from search_spaces import Arch

from .engine.loop import NATSearch, SearchResult
from .spec import FinetuneSpec
from .training.evaluate import SubnetEvaluator
from .training.train import evaluate, finetune

__all__ = ["FrontModel", "hand_back"]


@dataclass
class FrontModel:
    """One front subnet as handed back. Accuracies are fractions in 0..1; ``val_accuracy``
    and ``test_accuracy`` are the exported weights', fine-tuned or inherited."""

    index: int  # into the archive
    arch: Arch
    model: nn.Module
    inherited_val_accuracy: float
    inherited_test_accuracy: float
    val_accuracy: float
    test_accuracy: float
    finetune_epochs: int


def hand_back(
    search: NATSearch, result: SearchResult, spec: FinetuneSpec, progress: bool = False
) -> list[FrontModel]:
    """The front's subnets, in front order. Each is extracted with BatchNorm recalibrated on
    the batches in-process evaluation uses (so any backend gives the same models); the
    ``spec.top`` most accurate are then fine-tuned for ``spec.epochs``."""
    cfg, data, space = search.config, search.data, result.archive.space
    evaluator = SubnetEvaluator(data, cfg.bn_batches, cfg.batch_size, cfg.seed)
    test_batches = evaluator.batches(data.test)
    by_accuracy = sorted(result.front, key=lambda i: -result.archive.entries[i].accuracy)
    chosen = set(by_accuracy[: spec.top]) if spec.epochs else set()
    teacher = None
    if chosen and spec.distill_weight > 0:
        teacher_arch = search.teacher()
        teacher = (
            evaluator.evaluate_one(search.supernet, teacher_arch)[1],
            teacher_arch.resolution,
        )
    models = []
    for i in result.front:
        arch = space.decode(result.archive.entries[i].x)
        val, model = evaluator.evaluate_one(search.supernet, arch)
        test = evaluate(model, test_batches, arch.resolution)
        front_model = FrontModel(i, arch, model, val, test, val, test, 0)
        if i in chosen:
            finetune(
                model,
                data,
                arch.resolution,
                spec.epochs,
                lr=spec.lr,
                weight_decay=spec.weight_decay,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                progress=progress,
                teacher=teacher,
                distill_weight=spec.distill_weight,
            )
            model.cpu()
            front_model.val_accuracy = evaluate(model, evaluator.val_batches, arch.resolution)
            front_model.test_accuracy = evaluate(model, test_batches, arch.resolution)
            front_model.finetune_epochs = spec.epochs
        models.append(front_model)
    return models
