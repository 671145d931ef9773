"""Ray backend, cluster mode and resume. Every Ray node listens on loopback only."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_space
from test_search import TINY, _budget

import nat
import supernets
from nat import resume
from nat.backends.ray import RayRunner, check_workers, ray_session
from nat.cli import main
from nat.data import data_settings, load_from_settings
from nat.engine.archive import Archive
from nat.spec import RunSpec
from nat.training.evaluate import EvaluationError, SubnetEvaluator

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    return nat.search(max_params=_budget(), seed=0, out=out, **TINY), out


def _entries(result):
    return [(e.x, e.accuracy, e.source, e.iteration) for e in result.archive.entries]


@pytest.fixture(scope="module")
def evaluation_setup():
    settings = data_settings("digits", 16, 0, 500)
    data = load_from_settings(settings)
    space = small_space("shufflenetv2", resolutions=(12, 16))
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10).eval()
    archs = [space.decode(x) for x in space.sample(10, np.random.default_rng(0))]
    local = SubnetEvaluator(data, 4)(net, archs)
    return settings, space, net, archs, local


def test_ray_workers_give_the_local_results_and_survive_a_killed_worker(evaluation_setup):
    settings, space, net, archs, local = evaluation_setup
    with ray_session(workers=2) as cpus:
        assert cpus == 2
        runner = RayRunner(settings, space, 10, 2, bn_batches=4)
        assert np.array_equal(runner(net, archs), local)
        published = runner._published
        runner(net, archs[:2])
        assert runner._published is published  # same weights: not put again

        pids = runner.worker_pids()
        out = {}
        thread = threading.Thread(target=lambda: out.update(acc=runner(net, archs * 2)))
        thread.start()
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-evaluation
        thread.join(timeout=300)
        assert np.array_equal(out["acc"], np.tile(local, 2))
        assert runner.worker_pids()[0] != pids[0]  # the actor was restarted

        bad = dataclasses.replace(archs[1], stem_channels=10_000)  # not in the space
        with pytest.raises(EvaluationError) as failure:
            runner(net, [archs[0], bad, archs[2]])
        assert str(failure.value).startswith(f"evaluating {bad.to_json()} failed on a Ray worker")
        assert np.array_equal(runner(net, archs[:3]), local[:3])  # the pool is usable again


@contextmanager
def _two_node_cluster() -> Iterator[str]:
    """A Ray cluster of two nodes, one CPU each, on loopback addresses; yields its address.
    Token authentication with the machine's token (``~/.ray/auth_token``, made when missing:
    ``ray start`` with auth on does not make one, and a local ``ray.init`` earlier in this
    process already uses it)."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    head = [RAY, "start", "--head", "--node-ip-address", "127.0.0.2", "--port", str(port)]
    head += ["--num-cpus", "1", "--include-dashboard=false"]
    worker = [RAY, "start", "--address", f"127.0.0.2:{port}", "--node-ip-address", "127.0.0.3"]
    worker += ["--num-cpus", "1"]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.2:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="class")
def cluster() -> Iterator[str]:
    """One two-node cluster for the tests of a class. Class-scoped, not module-scoped: while
    a cluster started by ``ray start`` is up, a plain ``ray.init()`` joins it."""
    with _two_node_cluster() as address:
        yield address


class TestOnATwoNodeLoopbackCluster:
    def test_a_search_matches_a_single_process_one(self, reference, cluster, tmp_path):
        result = nat.search(max_params=_budget(), seed=0, out=tmp_path, address=cluster, **TINY)
        assert _entries(result) == _entries(reference[0])
        assert _exported(tmp_path) == _exported(reference[1])

    def test_a_run_without_address_starts_its_own_ray_beside_the_cluster(self, cluster):
        # Ray's plain init() joins the machine's `ray start` cluster, and refuses num_cpus there.
        with ray_session(workers=1) as cpus:
            import ray

            assert cpus == 1  # not the cluster's two
            assert ray.get_runtime_context().gcs_address != cluster

    def test_data_parallel_pretraining_matches_one_process_and_resumes_a_killed_worker(
        self, cluster, tmp_path
    ):
        """Two Ray Train workers on two loopback nodes, each on half of every batch with
        BatchNorm statistics pooled, train what one process trains on whole batches (up to float
        rounding, amplified by training: see test_train's test of the same without Ray); a run
        whose worker dies in the middle of the second epoch resumes from the first epoch's
        checkpoint and ends with the same weights as the run that was not killed."""
        import torch.distributed as dist
        from test_train import _relative_gap

        from nat.backends.ray_train import checkpointed_epochs, pretrain_data_parallel
        from nat.prepare import initial_supernet, load_data, pretrain_supernet

        spec = RunSpec.from_options(
            space="resnet",
            data="digits",
            subset=120,
            pretrain_epochs=2,
            pretrain_lr=0.01,
            pretrain_batch_size=48,  # two steps an epoch: rounding grows with every step
            seed=0,
            space_options={"resolutions": [16], "width_mults": [0.125, 0.25]},
        ).validate()
        data = load_data(spec)
        supernet, _ = initial_supernet(spec, data)
        start = {k: v.clone() for k, v in supernet.state_dict().items()}
        # One process, with BatchNorm's sums taken over a group of one: the same arithmetic.
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1
        )
        try:
            supernet.sync_batch_norm()
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            reference = pretrain_supernet(spec, data, supernet, progress=False).state_dict()
        finally:
            torch.set_num_threads(threads)
            dist.destroy_process_group()
        steps_per_epoch = len(data.train) // spec.pretrain.batch_size

        def from_start():
            net = supernets.build_supernet(spec.build_space(), data.num_classes)
            net.load_state_dict(start)
            return net

        with ray_session(address=cluster):
            pooled = {"sync_batch_norm": True}
            whole, _ = pretrain_data_parallel(spec, from_start(), 2, tmp_path / "whole", **pooled)
            killed, metadata = pretrain_data_parallel(
                spec,
                from_start(),
                2,
                tmp_path / "killed",
                fail_at_step=steps_per_epoch + 1,
                **pooled,
            )
        assert [r["epoch"] for r in metadata["history"]] == [1, 2]
        assert (tmp_path / "killed" / "injected-fault").is_file()  # the worker did die
        assert metadata["last_epoch_timing"]["resumed_after_epoch"] == 1  # killed in epoch 2
        assert checkpointed_epochs(tmp_path / "killed") == 2  # as --resume would report it
        whole, killed = whole.state_dict(), killed.state_dict()
        for key, value in killed.items():
            torch.testing.assert_close(value, whole[key], atol=1e-6, rtol=1e-6, msg=key)
        assert _relative_gap(reference, whole, start, statistics=False) < 0.1
        assert _relative_gap(reference, whole, start, statistics=True) < 1e-4


def _exported(out: Path) -> list:
    """Each exported front subnet's test accuracy and weights."""
    folders = sorted((out / "front").iterdir())
    assert folders
    return [
        (
            json.loads((f / "config.json").read_text())["test_accuracy"],
            {k: v.tolist() for k, v in torch.load(f / "weights.pt", weights_only=True).items()},
        )
        for f in folders
    ]


def test_a_ray_runs_exported_front_scores_as_the_in_process_one(reference, tmp_path):
    # BatchNorm of exported subnets is recalibrated whatever evaluated them (it was not, on Ray).
    result = nat.search(max_params=_budget(), seed=0, out=tmp_path, workers=2, **TINY)
    assert _entries(result) == _entries(reference[0])
    assert _exported(tmp_path) == _exported(reference[1])


def test_unreachable_address_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="cannot reach a Ray cluster at 127.0.0.2:9"):
        with ray_session(address="127.0.0.2:9"):
            pass
    with pytest.raises(ValueError, match="expected 'auto', 'host:port'"):
        with ray_session(address="nowhere"):
            pass


def test_worker_counts_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        check_workers(0)
    with pytest.warns(UserWarning, match="using"):
        assert check_workers(1000) == os.cpu_count()


def test_sigkilled_search_resumes_to_the_uninterrupted_archive(reference, tmp_path):
    out = tmp_path / "run"
    options = TINY["space_options"]
    argv = [
        sys.executable,
        "-m",
        "nat.cli",
        "search",
        "--space",
        "shufflenetv2",
        "--resolutions",
        ",".join(map(str, options["resolutions"])),
        "--width-mults",
        ",".join(map(str, options["width_mults"])),
        "--subset",
        "500",
        "--pretrain-epochs",
        "1",
        "--iterations",
        "2",
        "--doe-size",
        "6",
        "--candidates",
        "3",
        "--population",
        "12",
        "--generations",
        "4",
        "--adapt-epochs",
        "1",
        "--bn-batches",
        "2",
        "--max-params",
        str(_budget()),
        "--seed",
        "0",
        "--no-onnx",
        "--quiet",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "resume" / "state.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["iteration"] >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "report.md").exists()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    resumed = Archive.load(out / "archive.json")
    assert [(e.x, e.accuracy) for e in resumed.entries] == [
        (e.x, e.accuracy) for e in reference[0].archive.entries
    ]
    assert (out / "report.md").is_file()


def test_resume_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="holds no run.json"):
        resume(tmp_path)
    options = {k: v for k, v in TINY.items() if k != "progress"}
    spec = RunSpec.from_options(**options, max_params=_budget(), out=str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps(spec.to_dict()))
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        resume(tmp_path)


def test_data_parallel_adaptation_with_ray_train(evaluation_setup, tmp_path):
    from dataclasses import asdict

    from nat.backends.ray_train import RayTrainAdapter
    from nat.training.train import TrainConfig

    settings, space, _, _, _ = evaluation_setup
    data = load_from_settings(settings)
    torch.manual_seed(0)
    net = supernets.build_supernet(space, 10).eval()
    evaluator = SubnetEvaluator(data, 4)
    before = evaluator(net, [space.largest()])[0]
    weights = net.classifier.weight.detach().clone()
    top = space.sample(8, np.random.default_rng(0))
    with ray_session(workers=2):
        adapter = RayTrainAdapter(settings, 2, tmp_path, cpus_per_worker=0.5)
        config = TrainConfig(epochs=6, batch_size=32, lr=0.1, random_subnets=1)
        adapter(net, top, asdict(config), space.encode(space.largest()))
    assert not torch.equal(net.classifier.weight, weights)  # the trained weights came back
    after = evaluator(net, [space.largest()])[0]
    assert before < 0.3 < after  # data-parallel epochs on digits learn something


def test_adapt_workers_need_ray():
    with pytest.raises(ValueError, match="--adapt-workers: needs Ray"):
        nat.search(max_params=_budget(), seed=0, adapt_workers=2, **TINY)
