"""Real evaluation of subnets: inherited weights, recalibrated BatchNorm, validation accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from search_spaces import Arch
from supernets import Supernet

from ..data import DataSplits, make_loader
from .train import evaluate_subnet

__all__ = ["EvaluationError", "SubnetEvaluator"]


class EvaluationError(RuntimeError):
    """A subnet could not be evaluated; the message names its architecture. Never scored 0."""


class SubnetEvaluator:
    """Scores architectures with the supernet's current weights.

    The BatchNorm batches (training images, no augmentation) and the validation batches are
    drawn once, from ``seed``, so every subnet is measured on the same images in any order:
    the same supernet gives the same accuracies, whichever worker evaluates them. Subnets are
    evaluated on ``device`` (default: the CPU) and handed back on the CPU.
    """

    def __init__(
        self,
        data: DataSplits,
        bn_batches: int = 20,
        batch_size: int = 64,
        seed: int = 0,
        progress: bool = False,
        device: torch.device | None = None,
    ) -> None:
        if bn_batches < 1:
            raise ValueError(f"bn_batches must be at least 1, got {bn_batches}")
        loader = make_loader(data.train_eval, batch_size, shuffle=True, seed=seed)
        self.bn_batches = list(islice(iter(loader), bn_batches))
        self.val_batches = self.batches(data.val)
        self.progress, self.device = progress, device

    @staticmethod
    def batches(split: Dataset) -> list:
        """All of ``split`` in batches of 256, in order: for validation or test accuracy."""
        return list(make_loader(split, 256, shuffle=False))

    def evaluate_one(self, supernet: Supernet, arch: Arch) -> tuple[float, nn.Module]:
        """(validation accuracy in 0..1, the extracted model with recalibrated BatchNorm)."""
        try:
            acc, model = evaluate_subnet(
                supernet,
                arch,
                self.bn_batches,
                self.val_batches,
                len(self.bn_batches),
                self.device,
            )
        except Exception as err:
            raise EvaluationError(f"evaluating {arch.to_json()} failed: {err}") from err
        if not np.isfinite(acc):
            raise EvaluationError(f"evaluating {arch.to_json()} gave accuracy {acc}")
        return acc, model

    @torch.no_grad()
    def __call__(self, supernet: Supernet, archs: Sequence[Arch]) -> np.ndarray:
        """Validation accuracies (0..1) of ``archs``; raises EvaluationError on failure."""
        archs = tqdm(archs, desc="evaluating", disable=not self.progress, leave=False)
        return np.array([self.evaluate_one(supernet, a)[0] for a in archs], dtype=np.float64)
