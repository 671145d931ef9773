"""The data and the supernet a run searches, built from its :class:`~nat.spec.RunSpec`:
the first stage of :mod:`nat.run`, and what Ray Train's workers, ``nat train-supernet`` and
the benchmarks build the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from supernets import Supernet, build_supernet

from .data import DataSplits, data_settings, load_from_settings
from .engine.problem import BudgetError, Budgets
from .folder import device_of
from .io.checkpoint import load_supernet
from .latency import latency_table_of
from .spec import OptionError, RunSpec
from .training.train import train_supernet

__all__ = [
    "data_settings_of",
    "initial_supernet",
    "load_data",
    "prepare_supernet",
    "pretrain_supernet",
    "pretraining_keywords",
    "run_budgets",
]


def data_settings_of(spec: RunSpec) -> dict:
    """The record :func:`nat.data.load_from_settings` loads, for the spec's data."""
    image_size = spec.data.image_size or max(spec.build_space().resolutions)
    d = spec.data
    seed = spec.seed if d.split_seed is None else d.split_seed
    settings = data_settings(
        d.source, image_size, seed, d.subset, d.val_fraction, d.test_fraction, d.classes
    )
    settings["cache_dir"] = d.cache_dir
    return settings


def load_data(spec: RunSpec) -> DataSplits:
    """The spec's data, split by its seed."""
    return load_from_settings(data_settings_of(spec))


def initial_supernet(
    spec: RunSpec, data: DataSplits, always_train: bool = False
) -> tuple[Supernet, bool]:
    """(the supernet to search, whether it needs pre-training): loaded from
    ``spec.checkpoint`` (its classifier rebuilt when the task has another number of classes:
    transfer, which trains), else built fresh. ``always_train``: train a loaded checkpoint
    even when its classes match."""
    space = spec.build_space()
    trains = spec.pretrain.epochs > 0 or spec.plan.time_limit is not None
    if spec.checkpoint is not None:
        supernet, _ = load_supernet(spec.checkpoint, space=spec.space)
        if spec.space_options and space != supernet.space:
            raise OptionError(
                "--checkpoint",
                f"{spec.checkpoint} was trained on another {spec.space} space "
                f"({supernet.space!r}); drop the space options or retrain",
            )
        if supernet.num_classes == data.num_classes and not always_train:
            return supernet, False
        if supernet.num_classes != data.num_classes:
            supernet.reset_classifier(data.num_classes)
        return supernet, trains
    torch.manual_seed(spec.seed)  # the initial weights
    supernet = build_supernet(space, data.num_classes)
    if spec.pretrain.zero_init_residual:
        supernet.zero_init_residual()
    return supernet, trains


def pretraining_keywords(spec: RunSpec, budgets: Budgets) -> dict:
    """The keywords of :func:`train_supernet` that fit pre-training to ``budgets`` (the
    spec's, :func:`run_budgets`)."""
    multiple = spec.pretrain.sample_multiple
    return {
        "sampler": budgets.sampler(multiple) if multiple and budgets.constrained else None,
        "teacher": budgets.teacher(spec.pretrain.teacher_multiple),
        "anchor": budgets.anchor(spec.pretrain.anchor_multiple),
        "device": device_of(spec),
    }


def pretrain_supernet(
    spec: RunSpec,
    data: DataSplits,
    supernet: Supernet,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    seconds: float | None = None,
    budgets: Budgets | None = None,
    **training: Any,
) -> Supernet:
    """Pre-train ``supernet`` with ``spec.pretrain`` for its epochs, or for ``seconds``
    (a run's time budget). ``checkpoint``: where training is saved after every epoch, and
    continued from with ``resume``. ``training``: further keywords of :func:`train_supernet`
    (a device, data-parallel hooks), over those fitted to ``budgets`` (the spec's, built
    here when not given)."""
    config = spec.pretrain
    if seconds is not None and seconds <= 0:
        return supernet.cpu()
    if seconds is None and config.epochs == 0:
        return supernet.cpu()
    train_supernet(
        supernet,
        data,
        config,
        checkpoint=checkpoint,
        checkpoint_metadata={"data": data_settings_of(spec)},
        progress=progress,
        resume=resume,
        seconds=seconds,
        **(pretraining_keywords(spec, budgets or run_budgets(spec, data.num_classes)) | training),
    )
    return supernet.cpu()


def prepare_supernet(
    spec: RunSpec,
    data: DataSplits,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    always_train: bool = False,
) -> Supernet:
    """The supernet to search: loaded from ``spec.checkpoint``, else built; trained for
    ``spec.pretrain.epochs`` when new, or when the checkpoint's task has another number of
    classes (transfer: the classifier is rebuilt, the rest kept). ``checkpoint``: where
    training is saved after every epoch, and continued from with ``resume``.
    ``always_train``: train a loaded checkpoint even when its classes match."""
    supernet, trains = initial_supernet(spec, data, always_train)
    if not trains:
        return supernet
    return pretrain_supernet(spec, data, supernet, checkpoint, resume, progress)


def run_budgets(spec: RunSpec, num_classes: int, progress: bool = False) -> Budgets:
    """The run's budgets, with the latency table they need; an error names the setting."""
    space, search = spec.build_space(), spec.search
    try:
        table = latency_table_of(search, space, num_classes, log=print if progress else None)
    except ValueError as err:  # a --latency-table file that does not fit, or no table
        option = "latency_table" if search.latency_table else "max_latency"
        raise OptionError(option, str(err)) from None
    try:
        return Budgets.of(search, space, num_classes, table)
    except BudgetError as err:
        raise OptionError(f"max_{err.metric}", str(err)) from None
