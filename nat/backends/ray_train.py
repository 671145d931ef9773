"""Data-parallel supernet training on Ray Train (``TorchTrainer``; gloo on CPU, NCCL on GPU):
pre-training, e.g. a source supernet (``nat train-supernet --workers``), and adaptation
during a search (``--adapt-workers``).

Every worker loads the same data, draws the same batches and subnets from the same seeds,
and trains on its share of each batch (``images[rank::world]``). Gradients are averaged
with one all-reduce per step, so the recipe (the batch size is the whole batch's) means the
same for any worker count. BatchNorm normalises each share by its own statistics, unless
they are pooled over the workers (:meth:`supernets.Supernet.sync_batch_norm`): then N
workers train what one process would, up to float rounding, at the cost of hundreds of small
collectives a step. Each worker loads and augments the whole batch, small beside the
sandwich rule's four or five forward and backward passes a step.

``storage`` must be a folder every node can reach: Ray Train keeps its checkpoints there.
Pre-training reports one after every epoch; a worker or node that dies resumes from the last
(``FailureConfig``), and so does the same command run again after the driver was killed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from supernets import Supernet

__all__ = ["RayTrainAdapter", "checkpointed_epochs", "pretrain_data_parallel"]

CHECKPOINT_FILE = "supernet.pt"
_PRETRAIN = "pretrain"  # Ray Train's name for a pre-training run in its storage


def _gradient_average(world: int) -> Callable[[Supernet], None]:
    """Averages a supernet's gradients over the ``world`` workers in place."""
    import torch
    import torch.distributed as dist

    def average(net: Supernet) -> None:
        # One all-reduce of every gradient flattened together: one per tensor would pay the
        # transport's latency a few hundred times a step.
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        for g, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(averaged.view_as(g))

    return average


def _worker(config: dict) -> tuple[int, int, object]:
    """(rank, world, device) of this Ray Train worker, its threads set."""
    import ray.train
    import ray.train.torch
    import torch

    context = ray.train.get_context()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    return context.get_world_rank(), context.get_world_size(), device


def _supernet(config: dict, space: object) -> Supernet:
    from supernets import build_supernet

    supernet = build_supernet(space, config["num_classes"])
    supernet.load_state_dict(config["state"])
    supernet.sync_batch_norm(config["sync_batch_norm"])
    return supernet


def _fit(
    loop: Callable[[dict], None],
    config: dict,
    workers: int,
    storage: Path,
    name: str,
    cpus_per_worker: float,
    max_failures: int = 0,
    resume_from: Path | None = None,
):
    """Runs ``loop`` on ``workers`` Ray Train workers; the ``ray.train.Result``."""
    from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = config["use_gpu"]
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(
            storage_path=str(storage),
            name=name,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
        resume_from_checkpoint=None
        if resume_from is None
        else Checkpoint.from_directory(str(resume_from)),
    )
    return trainer.fit()


def _state_of(supernet: Supernet) -> dict:
    return {k: v.detach().cpu() for k, v in supernet.state_dict().items()}


# -- pre-training --------------------------------------------------------------------------
def _pretrain_loop(config: dict) -> None:
    """One Ray Train worker of :func:`pretrain_data_parallel`."""
    import ray.train

    from ..prepare import load_data, pretrain_supernet
    from ..spec import RunSpec

    rank, world, device = _worker(config)
    spec = RunSpec.from_dict(config["spec"])
    data = load_data(spec)
    supernet = _supernet(config, spec.build_space())
    restored = ray.train.get_checkpoint()
    average, steps = _gradient_average(world), 0
    # For the resume test: the last worker dies at this step, once (the marker says it did).
    fail_at = config["fail_at_step"] if rank == world - 1 else None
    marker = None if fail_at is None else Path(config["storage"]) / "injected-fault"
    marks: list[float] = []  # when each step's gradients were ready
    averaging: list[float] = []  # seconds of each step's gradient all-reduce
    first_epoch: list[int] = []  # the first epoch this attempt trained

    def before_step(net: Supernet) -> None:
        nonlocal steps
        steps += 1
        if marker is not None and steps == fail_at and not marker.exists():
            marker.touch()
            # Ray Train polls its workers every 2 s: the last epoch's checkpoint is registered
            # by then, as it would be for a worker killed later in a long epoch.
            time.sleep(5)
            os._exit(1)  # as a killed process: no cleanup, no report
        marks.append(time.perf_counter())
        average(net)
        averaging.append(time.perf_counter() - marks[-1])

    with tempfile.TemporaryDirectory(prefix="nat-pretrain-") as folder:
        local = Path(folder) / CHECKPOINT_FILE
        if restored is not None:
            with restored.as_directory() as saved:
                shutil.copyfile(Path(saved) / CHECKPOINT_FILE, local)

        def after_epoch(history: list[dict]) -> None:
            first_epoch[:] = first_epoch or [len(history)]
            metrics = {
                "epoch": len(history),
                "resumed_after_epoch": first_epoch[0] - 1,
                "loss": history[-1]["loss"],
                # medians over the epoch: the step (compute and communication) and its
                # gradient all-reduce (BatchNorm's all-reduces are inside the step)
                "step_seconds": float(np.median(np.diff(marks))) if len(marks) > 1 else None,
                "allreduce_seconds": float(np.median(averaging)) if averaging else None,
            }
            marks.clear()
            averaging.clear()
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report(metrics, checkpoint)

        pretrain_supernet(
            spec,
            data,
            supernet,
            local,
            resume=restored is not None,
            progress=False,
            device=device,
            before_step=before_step,
            shard=(rank, world),
            after_epoch=after_epoch,
        )


def checkpointed_epochs(storage: str | Path) -> int:
    """Epochs of pre-training checkpointed in ``storage`` by an unfinished
    :func:`pretrain_data_parallel` (0: none), which a new call continues. Only each
    checkpoint's header is read: Ray Train keeps one whole supernet per epoch."""
    from ..io.checkpoint import read_supernet_header

    epochs = 0
    for path in Path(storage).glob(f"{_PRETRAIN}/checkpoint_*/{CHECKPOINT_FILE}"):
        try:
            history = read_supernet_header(path)["metadata"].get("history", [])
        except ValueError:  # one cut short by the kill: Ray Train resumes from an earlier one
            continue
        epochs = max(epochs, len(history))
    return epochs


def pretrain_data_parallel(
    spec: object,
    supernet: Supernet,
    workers: int,
    storage: str | Path,
    cpus_per_worker: float = 1,
    threads: int = 1,
    resume_from: str | Path | None = None,
    max_failures: int = 3,
    fail_at_step: int | None = None,
    sync_batch_norm: bool = False,
) -> tuple[Supernet, dict]:
    """Pre-train ``supernet`` as ``spec`` (a :class:`~nat.spec.RunSpec`) says, data-parallel
    over ``workers`` Ray Train workers. ``storage``: where Ray Train keeps one checkpoint per
    epoch; if it holds an unfinished run of this kind, training continues from its last
    epoch. ``resume_from``: a checkpoint file with training state to continue instead (one
    saved by single-process training). Returns the trained supernet and the metadata of its
    last checkpoint (``history``, ``train_config``...) and, as ``last_epoch_timing``, rank
    0's median step and gradient all-reduce seconds over the last epoch, and the epoch its
    last attempt resumed after. ``fail_at_step``: for tests, the last worker exits once at
    that step, as a killed one.
    BatchNorm normalises each worker's share by its own statistics (as DDP without
    SyncBatchNorm); ``sync_batch_norm`` pools them over the workers, which makes the training
    one process's up to float rounding, at two round trips per BatchNorm layer and subnet
    each step (docs/benchmarks.md, section 14: 2.5x slower a step here)."""
    from ..io.checkpoint import load_supernet

    if workers < 2:
        raise ValueError(f"data-parallel training needs at least 2 workers, got {workers}")
    config = {
        "spec": spec.to_dict(),
        "num_classes": supernet.num_classes,
        "state": _state_of(supernet),
        "threads": threads,
        "use_gpu": spec.device == "cuda",
        "fail_at_step": fail_at_step,
        "storage": str(Path(storage).resolve()),
        "sync_batch_norm": sync_batch_norm,
    }
    with tempfile.TemporaryDirectory(prefix="nat-resume-") as start:
        if resume_from is not None:
            shutil.copyfile(resume_from, Path(start) / CHECKPOINT_FILE)
        result = _fit(
            _pretrain_loop,
            config,
            workers,
            Path(storage).resolve(),
            _PRETRAIN,
            cpus_per_worker,
            max_failures=max_failures,
            resume_from=Path(start) if resume_from is not None else None,
        )
    if result.checkpoint is None:
        raise RuntimeError(f"data-parallel pre-training ended without a checkpoint: {result}")
    with result.checkpoint.as_directory() as folder:
        trained, metadata = load_supernet(Path(folder) / CHECKPOINT_FILE)
    return trained, metadata | {"last_epoch_timing": result.metrics}


# -- adaptation ----------------------------------------------------------------------------
def _adapt_loop(config: dict) -> None:
    """One Ray Train worker of :class:`RayTrainAdapter`."""
    import ray.train

    import search_spaces

    from ..data import load_from_settings
    from ..engine.loop import categorical_sampler
    from ..io.checkpoint import save_supernet
    from ..training.train import TrainConfig, train_supernet

    rank, world, device = _worker(config)
    data = load_from_settings(config["data"])
    space = search_spaces.from_dict(config["space"])
    supernet = _supernet(config, space)
    train_supernet(
        supernet,
        data,
        TrainConfig(**config["train"]),
        sampler=categorical_sampler(space, np.array(config["top"])),
        teacher=space.decode(np.array(config["teacher"])),
        anchor=None if config["anchor"] is None else space.decode(np.array(config["anchor"])),
        device=device,
        progress=False,
        before_step=_gradient_average(world),
        shard=(rank, world),
    )
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            save_supernet(Path(folder) / CHECKPOINT_FILE, supernet.cpu())
            ray.train.report({"rank": rank}, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report({"rank": rank})


class RayTrainAdapter:
    """Supernet adaptation data-parallel over ``workers`` Ray Train workers (CPU).
    ``storage`` must be a folder every node can reach (Ray Train keeps the result there)."""

    def __init__(
        self,
        data_settings: dict,
        workers: int,
        storage: str | Path,
        cpus_per_worker: float = 1,
        threads: int = 1,
    ) -> None:
        if workers < 2:
            raise ValueError(f"data-parallel adaptation needs at least 2 workers, got {workers}")
        self.data_settings, self.workers = data_settings, workers
        self.storage, self.cpus_per_worker = Path(storage).resolve(), cpus_per_worker
        self.threads = threads
        self.calls = 0

    def __call__(
        self,
        supernet: Supernet,
        top: np.ndarray,
        train: dict,
        teacher: np.ndarray,
        anchor: np.ndarray | None = None,
    ) -> None:
        import torch

        from ..io.checkpoint import load_supernet

        self.calls += 1
        config = {
            "data": self.data_settings,
            "space": supernet.space.to_dict(),
            "num_classes": supernet.num_classes,
            "state": _state_of(supernet),
            "top": top.tolist(),
            "teacher": np.asarray(teacher).tolist(),
            "anchor": None if anchor is None else np.asarray(anchor).tolist(),
            "train": train,
            "threads": self.threads,
            "use_gpu": False,
            "sync_batch_norm": False,
        }
        result = _fit(
            _adapt_loop,
            config,
            self.workers,
            self.storage,
            f"adapt-{self.calls:04d}",
            self.cpus_per_worker,
        )
        with result.checkpoint.as_directory() as folder:
            adapted, _ = load_supernet(Path(folder) / CHECKPOINT_FILE)
        with torch.no_grad():
            supernet.load_state_dict(adapted.state_dict())
