import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import search_spaces

SPACES = search_spaces.list_spaces()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two pytest workers share the two cores: one thread each (and in every process a test
    # starts, which inherits the variable), not two threads each fighting for both cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the group into the node id
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (README's ``-n 2 --dist loadgroup``), one worker runs a module's
    tests together, so its module fixtures are built once, and every test marked ``ray`` or
    ``clock`` one after another: a Ray cluster one test starts would be joined, or stopped by
    ``ray stop --force``, by another test's Ray, and a time limit is checked against the clock
    while the other worker runs one thread on the other core."""
    for item in items:
        serial = item.get_closest_marker("ray") or item.get_closest_marker("clock")
        group = "ray-and-clock" if serial else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Stop when xdist did not group the tests (it writes the group into the node id, which
    pytest 9.2 no longer lets it do): Ray tests on two workers at once join or stop each
    other's clusters and fail far from the cause."""
    if node.config.getoption("dist") == "loadgroup" and not all("@" in i for i in ids):
        pytest.exit(
            "pytest-xdist did not group the tests (--dist loadgroup): install the pytest that "
            "pyproject.toml's dev extra asks for, or run one process with -n 0",
            returncode=4,
        )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def small_space(name: str, **extra) -> search_spaces.SearchSpace:
    """A space small enough to train in seconds on digits (low resolution, narrow)."""
    options = {"resolutions": (16, 20, 24), "width_mults": (0.25, 0.5)}
    if name == "resnet":
        options["width_mults"] = (0.125, 0.25)
    options.update(extra)
    return search_spaces.get(name, **options)


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    # A test that forgets cache_dir must not write into the user's home directory.
    monkeypatch.setenv("NAT_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))


def map_in_two_processes(fn: Callable, jobs: Iterable) -> list:
    """``fn`` over ``jobs`` in two fresh (spawned) processes, in order: ONNX export is
    single-threaded Python, so two processes halve the wall time of many exports."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))
