"""Ray evaluation backend: real evaluations as tasks of long-lived Ray actors.

Each actor loads the dataset once (from the same settings as the driver, so it draws the same
BatchNorm and validation batches) and keeps a supernet. The supernet's weights go into the
object store once per change of weights (in practice once per iteration), not once per task;
an actor fetches them only when the version it holds is stale. Actors are restarted when their
process dies and their pending tasks retried (Ray's ``max_restarts`` / ``max_task_retries``),
so a lost worker costs time, never a result. An evaluation that raises is reported with the
architecture that caused it.

Token authentication: ``ray start`` (Ray >= 2.60) turns it on and writes ``~/.ray/auth_token``;
drivers joining such a cluster need ``RAY_AUTH_MODE=token``, which :func:`ray_session` sets
unless the environment already says otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from search_spaces import Arch, SearchSpace
from supernets import Supernet

from ..training.evaluate import EvaluationError
from .address import check_address, split_address

__all__ = ["RayRunner", "RayTrainAdapter", "check_workers", "ray_session"]

# A loopback address other than 127.0.0.1, which Ray would rewrite to the host's network
# address: a local run then never listens beyond this machine.
LOCAL_NODE_IP = os.environ.get("NAT_RAY_NODE_IP", "127.0.0.2")


def check_workers(workers: int) -> int:
    """Validate ``--workers``: at least 1; more than the CPUs is capped, with a warning."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    cpus = os.cpu_count() or 1
    if workers > cpus:
        warnings.warn(
            f"--workers {workers} is more than the {cpus} CPUs here: using {cpus}", stacklevel=2
        )
        return cpus
    return workers


@contextmanager
def ray_session(workers: int | None = None, address: str | None = None) -> Iterator[int]:
    """Start Ray for this run (``workers`` CPUs, dashboard off, loopback only) or join the
    cluster at ``address``; yields the number of CPUs available to the run. Shuts Ray down
    on exit."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        check_address(address)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        target = split_address(address)
        kwargs = {}
        if target is not None and not address.startswith("ray://"):
            try:
                if ipaddress.ip_address(target[0]).is_loopback:
                    kwargs["_node_ip_address"] = target[0]  # stay on the cluster's loopback
            except ValueError:
                pass  # a host name: let Ray pick the interface
        try:
            ray.init(address=address, log_to_driver=False, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            raise ConnectionError(f"cannot join the Ray cluster at {address}: {err}") from err
    else:
        workers = check_workers(workers or 1)
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address=LOCAL_NODE_IP,
            log_to_driver=False,
        )
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


class _Worker:
    """Body of the Ray actor: the dataset's evaluation batches and a supernet."""

    def __init__(
        self,
        data_settings: dict,
        bn_batches: int,
        batch_size: int,
        seed: int,
        space: dict,
        num_classes: int,
        threads: int,
    ) -> None:
        import torch

        import search_spaces
        from supernets import build_supernet

        from ..data import load_from_settings
        from ..training.evaluate import SubnetEvaluator

        torch.set_num_threads(threads)  # as many threads as CPUs this worker has
        data = load_from_settings(data_settings)
        self.evaluator = SubnetEvaluator(data, bn_batches, batch_size, seed)
        space = search_spaces.from_dict(space)
        self.supernet = build_supernet(space, num_classes).eval()
        self.version: object = None

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, version: object, state_ref: list, arch_json: str) -> float:
        import ray

        if version != self.version:
            self.supernet.load_state_dict(ray.get(state_ref[0]))
            self.supernet.eval()
            self.version = version
        arch = Arch.from_json(arch_json)
        return float(self.evaluator(self.supernet, [arch])[0])


class RayRunner:
    """Evaluates architectures on Ray actors; call it like a :class:`SubnetEvaluator`.

    ``workers`` actors of ``cpus_per_worker`` CPUs each load the data described by
    ``data_settings`` (see :func:`nat.data.data_settings`). Use inside :func:`ray_session`.
    """

    def __init__(
        self,
        data_settings: dict,
        space: SearchSpace,
        num_classes: int,
        workers: int,
        bn_batches: int = 20,
        batch_size: int = 64,
        seed: int = 0,
        cpus_per_worker: float = 1,
        threads: int = 1,
        progress: bool = False,
        max_task_retries: int = 3,
    ) -> None:
        import ray

        actor = ray.remote(
            num_cpus=cpus_per_worker, max_restarts=-1, max_task_retries=max_task_retries
        )(_Worker)
        self.actors = [
            actor.remote(
                data_settings,
                bn_batches,
                batch_size,
                seed,
                space.to_dict(),
                num_classes,
                threads,
            )
            for _ in range(workers)
        ]
        self.progress = progress
        self._published: tuple[object, object] | None = None  # (version, object ref)

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def _publish(self, supernet: Supernet) -> tuple[object, object]:
        """The weights in the object store, put there again only when they changed."""
        import ray

        state = supernet.state_dict()
        # Every in-place update (optimiser step, load_state_dict) bumps a tensor's version.
        version = (id(supernet), tuple(t._version for t in state.values()))
        if self._published is None or self._published[0] != version:
            cpu_state = {k: v.detach().cpu() for k, v in state.items()}
            self._published = (version, ray.put(cpu_state))
        return self._published

    def __call__(self, supernet: Supernet, archs: Sequence[Arch]) -> np.ndarray:
        import ray
        from ray.util import ActorPool

        version, ref = self._publish(supernet)
        key = hash(version)
        # Ordered map(), not map_unordered(): the unordered getters do not say which submission
        # a result or error came from, so position is what ties each one to its architecture.
        outcomes = ActorPool(self.actors).map(
            lambda actor, arch: actor.evaluate.remote(key, [ref], arch.to_json()), archs
        )
        results = np.full(len(archs), np.nan)
        with tqdm(
            total=len(archs), desc="evaluating (ray)", disable=not self.progress, leave=False
        ) as bar:
            for i, arch in enumerate(archs):
                try:
                    results[i] = next(outcomes)
                except ray.exceptions.RayTaskError as err:
                    raise EvaluationError(
                        f"evaluating {arch.to_json()} failed on a Ray worker: {err}"
                    ) from err
                bar.update(1)
        return results


def _adapt_loop(config: dict) -> None:
    """One Ray Train worker: train on its shard of the training split, averaging gradients
    with the others before every step (all workers draw the same subnets from the same
    seed, so the same parameters have gradients on every rank)."""
    import dataclasses
    import tempfile

    import ray.train
    import torch
    import torch.distributed as dist
    from torch.utils.data import Subset

    import search_spaces
    from supernets import build_supernet

    from ..data import load_from_settings
    from ..engine.loop import categorical_sampler
    from ..io.checkpoint import save_supernet
    from ..training.train import TrainConfig, train_supernet

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    data = load_from_settings(config["data"])
    shard = len(data.train) // world  # equal shards: every rank takes as many steps
    data = dataclasses.replace(data, train=Subset(data.train, range(rank, shard * world, world)))
    space = search_spaces.from_dict(config["space"])
    supernet = build_supernet(space, config["num_classes"])
    supernet.load_state_dict(config["state"])

    def average_gradients(net: Supernet) -> None:
        # One all-reduce of every gradient flattened together: one per tensor would pay the
        # transport's latency a few hundred times a step.
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        for g, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(averaged.view_as(g))

    train_supernet(
        supernet,
        data,
        TrainConfig(**config["train"]),
        sampler=categorical_sampler(space, np.array(config["top"])),
        teacher=space.decode(np.array(config["teacher"])),
        anchor=None if config["anchor"] is None else space.decode(np.array(config["anchor"])),
        device=torch.device("cpu"),
        progress=False,
        before_step=average_gradients,
    )
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            save_supernet(Path(folder) / "supernet.pt", supernet)
            ray.train.report({"rank": rank}, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report({"rank": rank})


class RayTrainAdapter:
    """Supernet adaptation data-parallel over ``workers`` Ray Train workers (gloo, CPU).
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
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from ..io.checkpoint import load_supernet

        self.calls += 1
        config = {
            "data": self.data_settings,
            "space": supernet.space.to_dict(),
            "num_classes": supernet.num_classes,
            "state": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},
            "top": top.tolist(),
            "teacher": np.asarray(teacher).tolist(),
            "anchor": None if anchor is None else np.asarray(anchor).tolist(),
            "train": train,
            "threads": self.threads,
        }
        trainer = TorchTrainer(
            _adapt_loop,
            train_loop_config=config,
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(
                num_workers=self.workers,
                use_gpu=False,
                resources_per_worker={"CPU": self.cpus_per_worker},
            ),
            run_config=RunConfig(storage_path=str(self.storage), name=f"adapt-{self.calls:04d}"),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            adapted, _ = load_supernet(Path(folder) / "supernet.pt")
        with torch.no_grad():
            supernet.load_state_dict(adapted.state_dict())
