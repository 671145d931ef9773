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
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_space
from test_search import TINY, _budget

import nat
import supernets
from nat.backends.ray import RayRunner, check_workers, ray_session
from nat.cli import main
from nat.data import data_settings, load_from_settings
from nat.engine.archive import Archive
from nat.run import resume
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


def test_search_on_a_two_node_loopback_cluster_matches_single_process(reference, tmp_path):
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    head = [
        RAY,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.2",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--include-dashboard=false",
    ]
    worker = [
        RAY,
        "start",
        "--address",
        f"127.0.0.2:{port}",
        "--node-ip-address",
        "127.0.0.3",
        "--num-cpus",
        "1",
    ]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        result = nat.search(
            max_params=_budget(), seed=0, out=tmp_path, address=f"127.0.0.2:{port}", **TINY
        )
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert _entries(result) == _entries(reference[0])
    assert _exported(tmp_path) == _exported(reference[1])


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

    from nat.backends.ray import RayTrainAdapter
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
