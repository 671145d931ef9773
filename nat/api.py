"""The Python entry point: ``nat.search(...)`` does what ``nat search`` does."""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import search_spaces
from supernets import Supernet, build_supernet

from .checkpoint import load_supernet, save_supernet
from .data import DataSplits, data_settings, load_dataset, load_from_settings
from .engine import NATSearch, SearchConfig, SearchResult
from .problem import Budgets
from .train import TrainConfig, train_supernet

__all__ = ["prepare_supernet", "resume", "search"]


def prepare_supernet(
    data: DataSplits,
    space: str = "mbv2",
    space_options: dict | None = None,
    checkpoint: str | Path | None = None,
    pretrain_epochs: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: bool = True,
) -> Supernet:
    """The supernet to search: loaded from ``checkpoint``, else built. It is trained for
    ``pretrain_epochs`` when it is new, or when the checkpoint was trained for a task with
    another number of classes (transfer: the classifier is rebuilt, the rest kept)."""
    if checkpoint is not None:
        supernet, _ = load_supernet(checkpoint, space=space)
        if space_options and search_spaces.get(space, **space_options) != supernet.space:
            raise ValueError(
                f"checkpoint {checkpoint} was trained on another {space} space "
                f"({supernet.space!r}); drop the space options or retrain"
            )
        if supernet.num_classes == data.num_classes:
            return supernet
        supernet.reset_classifier(data.num_classes)
    else:
        torch.manual_seed(seed)  # the initial weights
        supernet = build_supernet(
            search_spaces.get(space, **(space_options or {})), data.num_classes
        )
    if pretrain_epochs > 0:
        train_supernet(
            supernet,
            data,
            TrainConfig(epochs=pretrain_epochs, batch_size=batch_size, seed=seed),
            device=device,
            progress=progress,
        )
    return supernet


def search(
    space: str = "mbv2",
    data: str = "digits",
    max_params: float | None = None,
    max_macs: float | None = None,
    iterations: int = 5,
    seed: int = 0,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    pretrain_epochs: int = 5,
    space_options: dict | None = None,
    image_size: int | None = None,
    subset: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    workers: int | None = None,
    address: str | None = None,
    adapt_workers: int = 0,
    **config: Any,
) -> SearchResult:
    """Search the Pareto front of accuracy against parameters / MACs on a dataset.

    ``max_params`` (parameters) and ``max_macs`` (MACs per image) are hard budgets. Other
    keywords go to :class:`~nat.engine.SearchConfig` (e.g. ``metrics=("params", "macs")``,
    ``adapt_epochs=0``). With ``out``, the run folder gets archive.json, pareto.csv,
    pareto.png, history.csv, the front's subnets, report.md, and a resume/ snapshot after
    every iteration (see :func:`resume`). ``workers``: evaluate on that many local Ray
    workers; ``address``: on the Ray cluster there. Neither: in this process.
    ``adapt_workers`` >= 2 (with Ray): adapt the supernet data-parallel with Ray Train.
    """
    from .report import write_outputs  # matplotlib only when files are written

    start = time.perf_counter()
    if adapt_workers and workers is None and address is None:
        raise ValueError("--adapt-workers needs Ray: give --workers or --address too")
    resolutions = (space_options or {}).get("resolutions") or search_spaces.get(space).resolutions
    splits = load_dataset(
        data,
        image_size=image_size or max(resolutions),
        seed=seed,
        subset=subset,
        cache_dir=cache_dir,
    )
    # Check the budgets before spending minutes on training.
    Budgets(
        search_spaces.get(space, **(space_options or {})), splits.num_classes, max_params, max_macs
    )
    supernet = prepare_supernet(
        splits,
        space,
        space_options,
        checkpoint,
        pretrain_epochs,
        seed,
        config.get("batch_size", 64),
        progress=progress,
    )
    if out is not None:
        save_supernet(Path(out) / "supernet.pt", supernet.cpu(), pretrained=True)
    cfg = SearchConfig(
        iterations=iterations, max_params=max_params, max_macs=max_macs, seed=seed, **config
    )
    torch.manual_seed(seed)
    metadata = {
        "data": data_settings(data, splits.image_size, seed, subset),
        "class_names": splits.class_names,
    }
    with _backends(
        workers,
        address,
        adapt_workers,
        metadata["data"],
        cfg,
        supernet.space,
        splits.num_classes,
        out,
        progress,
    ) as (runner, adapter):
        run = NATSearch(supernet.cpu(), splits, cfg, out, runner, progress, metadata, adapter)
        result = run.run()
    if out is not None:
        write_outputs(run, result, out)
    result.seconds = time.perf_counter() - start
    return result


def resume(
    out: str | Path,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    adapt_workers: int = 0,
) -> SearchResult:
    """Continue the interrupted search in the run folder ``out`` from its last completed
    iteration; with the same seed and settings it ends with the same archive and front as
    an uninterrupted run."""
    from .report import write_outputs

    start = time.perf_counter()
    state = Path(out) / "resume" / "state.json"
    if not state.is_file():
        raise FileNotFoundError(
            f"{state} not found: nothing to resume in {out}; start the search again"
        )
    try:
        metadata = json.loads(state.read_text())["metadata"]
        settings = metadata["data"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"resume state {state} is corrupt: {err}") from err
    splits = load_from_settings(settings)
    run = NATSearch.resume(out, splits, progress=progress)
    with _backends(
        workers,
        address,
        adapt_workers,
        settings,
        run.config,
        run.space,
        splits.num_classes,
        out,
        progress,
    ) as (runner, adapter):
        if runner is not None:
            run.runner, run.adapter = runner, adapter
        result = run.run()
    write_outputs(run, result, out)
    result.seconds = time.perf_counter() - start
    return result


@contextmanager
def _backends(workers, address, adapt_workers, settings, cfg, space, num_classes, out, progress):
    """(runner, adapter): (None, None) to evaluate and adapt in this process, else Ray actors
    for evaluation and, with ``adapt_workers`` >= 2, Ray Train for adaptation."""
    if workers is None and address is None:
        if adapt_workers:
            raise ValueError("--adapt-workers needs Ray: give --workers or --address too")
        yield None, None
        return
    from .distributed import RayRunner, RayTrainAdapter, check_workers, ray_session

    if workers is not None:
        workers = check_workers(workers)
    with ray_session(workers, address) as cpus:
        n = workers or max(1, cpus)
        # The phases alternate, so evaluation actors and training workers share the CPUs.
        share = cpus / (n + adapt_workers) if adapt_workers else 1
        runner = RayRunner(
            settings,
            space,
            num_classes,
            n,
            cfg.bn_batches,
            cfg.batch_size,
            cfg.seed,
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
