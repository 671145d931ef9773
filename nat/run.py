"""Assemble and run a search from a :class:`~nat.spec.RunSpec`: the one path that ``nat
search``, ``nat.search()``, ``--resume``, ``nat compare`` and the benchmarks share.

Order of work, so that mistakes cost seconds: the spec is validated (options, paths, Ray
address), the run folder checked (an existing run is refused unless resumed or overwritten),
the data loaded and the budgets checked against it; only then is anything written or trained.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from supernets import Supernet, build_supernet

from .data import DataSplits, data_settings, load_from_settings
from .engine.heuristic import budget_width_mults
from .engine.loop import NATSearch, SearchResult
from .engine.problem import Budgets
from .folder import (
    PRETRAIN_FILE,
    RUN_FILE,
    device_of,
    fits_widths_to_budget,
    open_run,
    preflight,
    remove_outputs,
)
from .handback import hand_back
from .io.checkpoint import load_supernet, save_supernet
from .io.files import write_json
from .latency import latency_table_of
from .options import spec_error_names
from .spec import OptionError, RunSpec
from .training.train import train_supernet

__all__ = [
    "data_settings_of",
    "load_data",
    "prepare_supernet",
    "resume",
    "run",
]


def resume(out: str | Path, progress: bool = True, **backend: Any) -> SearchResult:
    """Continue the run in folder ``out`` from where it stopped (pre-training or search);
    ``backend``: ``workers``, ``address`` or ``adapt_workers`` to use this time."""
    spec = open_run(out)
    if backend:
        spec = RunSpec.from_options(spec, **backend)
    return run(spec, progress=progress, resume=True)


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
    space = spec.build_space()
    if spec.checkpoint is not None:
        supernet, _ = load_supernet(spec.checkpoint, space=spec.space)
        if spec.space_options and space != supernet.space:
            raise OptionError(
                "checkpoint",
                f"{spec.checkpoint} was trained on another {spec.space} space "
                f"({supernet.space!r}); drop the space options or retrain",
            ).named("--checkpoint")
        if supernet.num_classes == data.num_classes and not always_train:
            return supernet
        if supernet.num_classes != data.num_classes:
            supernet.reset_classifier(data.num_classes)
    else:
        torch.manual_seed(spec.seed)  # the initial weights
        supernet = build_supernet(space, data.num_classes)
        if spec.pretrain.zero_init_residual:
            supernet.zero_init_residual()
    if spec.pretrain.epochs > 0:
        budgets = _budgets(spec, data.num_classes)
        multiple = spec.pretrain.sample_multiple
        train_supernet(
            supernet,
            data,
            spec.pretrain,
            sampler=budgets.sampler(multiple) if multiple and budgets.constrained else None,
            teacher=budgets.teacher(spec.pretrain.teacher_multiple),
            anchor=budgets.anchor(spec.pretrain.anchor_multiple),
            checkpoint=checkpoint,
            checkpoint_metadata={"data": data_settings_of(spec)},
            device=device_of(spec),
            progress=progress,
            resume=resume,
        )
    return supernet.cpu()


def run(
    spec: RunSpec, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> SearchResult:
    """Validate, then run the search ``spec`` describes (or continue it, with ``resume``).
    See the module docstring for the order of work."""
    from .report import write_outputs  # matplotlib only when files are written

    start = time.perf_counter()
    spec = preflight(spec, resume, overwrite)
    out = Path(spec.out) if spec.out is not None else None
    data = load_data(spec)
    metadata = {"class_names": data.class_names}
    if fits_widths_to_budget(spec):
        widths = spec_error_names(lambda: _budget_widths(spec, data.num_classes))
        spec = RunSpec.from_options(spec, width_mults=list(widths))
        metadata["width_mults_from_budget"] = list(widths)
        if progress:
            print(f"width choices fitted to the budget: {', '.join(map(str, widths))}")
    # Before any training: a bad budget, or the latency table it needs, shows at once.
    budgets = spec_error_names(lambda: _budgets(spec, data.num_classes, progress))
    state = out / "resume" / "state.json" if out is not None else None
    if out is not None:
        if overwrite and not resume:
            remove_outputs(out)
        write_json(out / RUN_FILE, spec.to_dict())
    with _backends(spec, budgets.space, data.num_classes, out, progress) as (runner, adapter):
        if state is not None and resume and state.is_file():
            search = NATSearch.resume(out, data, spec.search, runner, progress, metadata)
            search.adapter = adapter
        else:
            pretrain = out / PRETRAIN_FILE if out is not None else None
            supernet = prepare_supernet(spec, data, pretrain, resume, progress)
            if out is not None:
                save_supernet(out / "supernet.pt", supernet, pretrained=True)
            torch.manual_seed(spec.seed)
            search = NATSearch(
                supernet, data, spec.search, out, runner, progress, metadata, adapter
            )
        search.pretrain = spec.pretrain
        result = search.run()
    result.models, result.heuristic = hand_back(search, result, spec.finetune, progress)
    if out is not None:
        write_outputs(search, result, out, onnx=spec.finetune.onnx)
        (out / PRETRAIN_FILE).unlink(missing_ok=True)  # the search has its own snapshots
    result.seconds = time.perf_counter() - start
    return result


def _budget_widths(spec: RunSpec, num_classes: int) -> tuple[float, ...]:
    search = spec.search
    try:
        return budget_width_mults(
            spec.build_space(), num_classes, search.max_params, search.max_macs
        )
    except ValueError as err:
        option = "max_params" if search.max_params is not None else "max_macs"
        raise OptionError(option, str(err)) from None


def _budgets(spec: RunSpec, num_classes: int, progress: bool = False) -> Budgets:
    try:
        space = spec.build_space()
        search = spec.search
        table = latency_table_of(search, space, num_classes, log=print if progress else None)
        return Budgets(
            space, num_classes, search.max_params, search.max_macs, search.max_latency, table
        )
    except ValueError as err:
        message = str(err)
        option = "max_params"
        if " MACs" in message:
            option = "max_macs"
        elif "latency" in message:
            option = "latency_table" if "table" in message else "max_latency"
        raise OptionError(option, message) from None


@contextmanager
def _backends(
    spec: RunSpec, space, num_classes: int, out: Path | None, progress: bool
) -> Iterator[tuple[Any, Any]]:
    """(runner, adapter): (None, None) to evaluate and adapt in this process, else Ray actors
    for evaluation and, with ``adapt_workers`` >= 2, Ray Train for adaptation."""
    backend, search_config = spec.backend, spec.search
    if backend.in_process:
        yield None, None
        return
    from .backends.ray import RayRunner, RayTrainAdapter, check_workers, ray_session

    workers = check_workers(backend.workers) if backend.workers is not None else None
    settings = data_settings_of(spec)
    with ray_session(workers, backend.address) as cpus:
        n = workers or max(1, cpus)
        adapt_workers = backend.adapt_workers
        # The phases alternate, so evaluation actors and training workers share the CPUs.
        share = cpus / (n + adapt_workers) if adapt_workers else 1
        runner = RayRunner(
            settings,
            space,
            num_classes,
            n,
            search_config.bn_batches,
            search_config.batch_size,
            search_config.seed,
            cpus_per_worker=share,
            threads=max(1, cpus // n),
            progress=progress,
        )
        adapter = None
        if adapt_workers:
            storage = Path(out or tempfile.mkdtemp(prefix="nat-")) / "ray-train"
            adapter = RayTrainAdapter(
                settings,
                adapt_workers,
                storage,
                cpus_per_worker=share,
                threads=max(1, cpus // adapt_workers),
            )
        yield runner, adapter
