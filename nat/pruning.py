"""Structured filter pruning to a parameter budget while fine-tuning: the baseline a search
is compared with (Cortesi's pruning during transfer), built on torch-pruning's dependency
graph (DepGraph), which removes a channel from every layer that shares it."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .data import DataSplits, make_loader
from .training.train import finetune, input_batch

__all__ = [
    "IMPORTANCES",
    "PruningError",
    "params_of",
    "prune_to_budget",
    "transfer",
    "transfer_lr",
]

# Which filters go: the smallest L1 norm of their weights (magnitude), or the smallest
# first-order Taylor estimate of the loss change, |weight × gradient|, over a few batches.
IMPORTANCES = ("l1", "taylor")
TAYLOR_BATCHES = 4
# Peak learning rates of fine-tuning: inherited weights on their own task need little; a new
# classifier on a new task needs more. Measured (CIFAR-10's 4.3M-param resnet to digits, 5
# epochs, seed 0): lr 0.05 reached 85.5 % unpruned and 67.6 % pruned to 600k, lr 0.01 only
# 33.9 % and 25.3 %.
SAME_TASK_LR = 0.01
NEW_TASK_LR = 0.05


class PruningError(ValueError):
    """The model cannot be pruned to the budget."""


def params_of(model: nn.Module) -> int:
    """Parameters of ``model``, every weight counted."""
    return sum(p.numel() for p in model.parameters())


def _pruner(model: nn.Module, example: torch.Tensor, importance: str, ratio: float, steps: int):
    import torch_pruning as tp

    scores = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }
    if importance not in scores:
        raise ValueError(f"unknown importance {importance!r}: choose one of {IMPORTANCES}")
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    try:
        return tp.pruner.BasePruner(
            model,
            example,
            importance=scores[importance](),
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=classifier,  # the classes stay
        )
    except (ZeroDivisionError, RuntimeError, KeyError) as err:
        raise _cannot_trace(model, err) from err


def _cannot_trace(model: nn.Module, err: Exception) -> PruningError:
    why = (
        "ShuffleNetV2's channel shuffle is beyond it (torchvision's too): prune mbv2 or resnet"
        if '"shufflenetv2"' in getattr(model, "arch_json", "")
        else "report the architecture"
    )
    return PruningError(
        f"torch-pruning cannot trace this network's channel dependencies "
        f"({type(err).__name__}: {err}); {why}"
    )


def _pruned_params(model: nn.Module, example: torch.Tensor, ratio: float) -> int | Exception:
    """Parameters left after pruning a copy of ``model`` by ``ratio`` in one step, or the
    error torch-pruning raised at that ratio (it can, near 1, on residual networks)."""
    trial = copy.deepcopy(model)
    try:
        _pruner(trial, example, "l1", ratio, 1).step()
    except (IndexError, RuntimeError) as err:
        return err
    return params_of(trial)


def _ratio_for(model: nn.Module, example: torch.Tensor, max_params: float) -> float:
    """The channel ratio that brings ``model`` within ``max_params``: every prunable layer
    loses the same fraction of its channels, so the count depends on the ratio alone (not on
    which channels go); bisection on copies pruned in one step, to within 0.001."""
    low, high, found, fewest, failure = 0.0, 0.99, None, params_of(model), None
    for _ in range(10):
        middle = (low + high) / 2
        count = _pruned_params(model, example, middle)
        if isinstance(count, Exception):
            high, failure = middle, count  # the pruner breaks here: look below
        elif count <= max_params:
            high, found = middle, middle
        else:
            low, fewest = middle, min(fewest, count)
    if found is None and low == 0.0 and failure is not None:
        raise _cannot_trace(model, failure)  # it never pruned anything
    if found is None:
        raise PruningError(
            f"pruning keeps at least {fewest:,} of the model's {params_of(model):,} parameters "
            f"(every layer keeps a channel, and the classifier stays), over the "
            f"{max_params:,.0f} budget: raise the budget or start from a smaller network"
        )
    return found


def prune_to_budget(
    model: nn.Module,
    data: DataSplits,
    resolution: int,
    max_params: float,
    importance: str = "l1",
    epochs: int = 2,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Prune ``model``'s channels (in place) to at most ``max_params`` parameters while
    fine-tuning it on ``data`` at ``resolution`` px with :func:`nat.training.train.finetune`
    (its recipe, ``lr`` and one cosine schedule over ``epochs``): a pruning step before each
    epoch, the ratio growing linearly to the one that meets the budget. Returns the model
    (eval mode); its shapes no longer match any architecture of the space."""
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: choose one of {IMPORTANCES}")
    if epochs < 1:
        raise ValueError(f"pruning happens while fine-tuning: give at least 1 epoch, not {epochs}")
    model = model.cpu().eval()
    example = torch.zeros(1, 3, resolution, resolution)
    if params_of(model) > max_params:
        ratio = _ratio_for(model, example, max_params)
        pruner = _pruner(model, example, importance, ratio, epochs)
    else:
        pruner = None  # already within the budget: fine-tuning only
    loader = make_loader(data.train_eval, 64, shuffle=True, seed=seed)

    def prune(epoch: int) -> bool:
        if pruner is None:
            return False
        if importance == "taylor":
            _accumulate_gradients(model, loader, resolution)
        pruner.step()
        model.zero_grad(set_to_none=True)
        return True

    finetune(model, data, resolution, epochs, lr=lr, seed=seed, progress=progress,
             before_epoch=prune)  # fmt: skip
    if params_of(model) > max_params:
        raise PruningError(
            f"pruning left {params_of(model):,} parameters, over the {max_params:,.0f} budget"
        )
    return model.eval()


def _gets_new_classifier(model: nn.Module, data: DataSplits, new_classifier: bool) -> bool:
    """Whether :func:`transfer` replaces ``model``'s classifier: when asked, or when its class
    count is not ``data``'s."""
    return new_classifier or model.classifier.out_features != data.num_classes


def transfer_lr(model: nn.Module, data: DataSplits, new_classifier: bool) -> float:
    """The default peak learning rate of :func:`transfer`: higher when the classifier is
    new (a new task) than when the model keeps its own."""
    return NEW_TASK_LR if _gets_new_classifier(model, data, new_classifier) else SAME_TASK_LR


def transfer(
    model: nn.Module,
    data: DataSplits,
    resolution: int,
    max_params: float | None = None,
    importance: str = "taylor",
    epochs: int = 5,
    lr: float | None = None,
    seed: int = 0,
    new_classifier: bool = True,
    progress: bool = False,
) -> nn.Module:
    """A copy of ``model`` (trained on any task) moved to ``data``'s: a new classifier
    (seeded) unless ``new_classifier`` is False and the class count is the same (the same
    task), then ``epochs`` of fine-tuning at ``resolution`` px and peak ``lr`` (default
    :func:`transfer_lr`), pruning to ``max_params`` during them (Cortesi's transfer).
    ``max_params=None`` fine-tunes it whole: the baseline pruning is judged by."""
    if lr is None:
        lr = transfer_lr(model, data, new_classifier)
    new = _gets_new_classifier(model, data, new_classifier)
    model = copy.deepcopy(model).cpu()
    if new:
        torch.manual_seed(seed)
        model.classifier = nn.Linear(model.classifier.in_features, data.num_classes)
    if max_params is None:
        finetune(model, data, resolution, epochs, lr=lr, seed=seed, progress=progress)
        return model.eval()
    return prune_to_budget(model, data, resolution, max_params, importance, epochs, lr, seed,
                           progress)  # fmt: skip


def _accumulate_gradients(model: nn.Module, loader: Iterable, resolution: int) -> None:
    """Gradients of the loss on a few training batches: what Taylor importance reads (in
    training mode, like the fine-tuning around it)."""
    model.train().zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for i, (images, labels) in enumerate(loader):
        if i == TAYLOR_BATCHES:
            break
        logits = model(input_batch(images, resolution).to(device))
        F.cross_entropy(logits, labels.to(device)).backward()
    model.eval()
