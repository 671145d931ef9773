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

import numpy as np
from tqdm.auto import tqdm

from search_spaces import Arch, SearchSpace
from supernets import Supernet

from ..training.evaluate import EvaluationError
from .address import check_address, split_address

__all__ = ["RayRunner", "check_workers", "ray_session"]

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
            address="local",  # a new instance even while a `ray start` cluster is up here
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
