"""The latency table: units that chain into the real network, a vectorised sum over them,
tables refused on another machine, and latency budgets as clear errors."""

import json

import numpy as np
import pytest
import torch
from conftest import SPACES

import search_spaces
import supernets
from nat import latency
from nat.cli import main
from nat.engine.problem import Budgets
from nat.latency import LatencyTable, StaleTableError
from supernets.base import build_unit

TINY = {"resolutions": (12,), "width_mults": (0.25, 0.5), "kernel_sizes": (3, 5)}


@pytest.fixture(scope="module")
def tiny_table():
    space = search_spaces.get("resnet", **TINY)
    return space, latency.build_table(space, 10, rounds=2, calibration=3, dynamo=False)


@pytest.mark.parametrize("name", SPACES)
def test_units_chain_into_the_static_network(name):
    # Every active unit, built alone and applied in order, computes the network's shapes;
    # the covering population holds every unit that random subnets have.
    space = search_spaces.get(name, stem="imagenet" if name == "resnet" else "small")
    X = space.sample(300, np.random.default_rng(0))
    rows, active = space.units(X, 10)
    covered, covered_active = space.units(space.covering_population(), 10)
    known = {tuple(r) for r in covered[covered_active]}
    assert {tuple(r) for r in rows[active]} <= known
    for i in range(3):
        arch = space.decode(X[i])
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            want = supernets.build_static(arch, 10).eval()(x)
            for row in rows[i][active[i]]:
                module, shape = build_unit(name, space.stem, row)
                assert tuple(x.shape) == shape
                x = module(x)
        assert x.shape == want.shape
    # Depth changes which units are active, not what they are.
    assert active[:, 0].all() and active[:, -1].all()
    assert (active[:, 1:-1].sum(1) == space.to_arrays(X).depth.sum(1)).all()


def test_prediction_is_the_sum_of_the_units_and_vectorised(tiny_table):
    space, table = tiny_table
    X = space.sample(20, np.random.default_rng(1))
    predicted = table.predict(X)
    assert predicted.shape == (20,) and (predicted > 0).all()
    rows, active = space.units(X, 10)
    lookup = {tuple(r): ms for r, ms in zip(table.rows.tolist(), table.ms, strict=True)}
    for i in range(len(X)):
        units = [lookup[tuple(r)] for r in rows[i][active[i]].tolist()]
        unit_sum = sum(units) - (len(units) - 1) * table.call_ms
        assert table.unit_sum(X[i])[0] == pytest.approx(unit_sum)
        assert predicted[i] == pytest.approx(table.scale * unit_sum**table.power)
        assert table.predict(X[i])[0] == pytest.approx(predicted[i])
    # Calibrated on three whole subnets: a positive power law, near the plain sum.
    assert table.power > 0 and table.scale > 0 and (table.scale, table.power) != (1, 1)
    deeper = space.encode(space.largest())
    assert table.predict(deeper)[0] > table.predict(space.encode(space.smallest()))[0]


def test_the_speed_factor_compares_the_reference_subnets_with_the_table(tiny_table):
    space, table = tiny_table
    X, calls = latency.reference_calls(space, 10, count=3, dynamo=False)
    # The same subnets every time: the ones the table was calibrated on.
    again, _ = latency.reference_calls(space, 10, count=3, dynamo=False)
    np.testing.assert_array_equal(X, again)
    assert len(calls) == 3
    slower = table.predict(X) * np.array([1.2, 1.5, 2.0])
    assert latency.speed_factor(table, X, slower) == pytest.approx(1.5)
    measured = latency.fastest_ms(calls, 1, rounds=1)
    assert (measured > 0).all() and 0.2 < latency.speed_factor(table, X, measured) < 5


def test_tables_round_trip_and_are_refused_elsewhere(tiny_table, tmp_path):
    space, table = tiny_table
    path = table.save(tmp_path / "table.json")
    again = latency.load_table(path, space, 10)
    X = space.sample(5, np.random.default_rng(2))
    assert np.allclose(again.predict(X), table.predict(X))

    doc = json.loads(path.read_text())
    doc["machine"]["cpu"] = "Some Other CPU"
    (tmp_path / "foreign.json").write_text(json.dumps(doc))
    with pytest.raises(StaleTableError, match="measured elsewhere.*Some Other CPU.*rebuild"):
        latency.load_table(tmp_path / "foreign.json")
    with pytest.raises(StaleTableError, match="for 10 classes, not 3"):
        latency.load_table(path, space, 3)
    other = search_spaces.get("resnet", **{**TINY, "resolutions": (12, 16)})
    with pytest.raises(StaleTableError, match="is for space"):
        latency.load_table(path, other, 10)
    # A table that lacks a unit names it instead of predicting garbage.
    fields = ("space", "num_classes", "machine", "call_ms", "build_seconds")
    partial = LatencyTable(
        **{k: getattr(table, k) for k in fields}, rows=table.rows[1:], ms=table.ms[1:]
    )
    with pytest.raises(StaleTableError, match="has no unit"):
        partial.predict(space.covering_population())


def test_the_cache_is_reused_and_a_stale_entry_rebuilt(tiny_table, monkeypatch):
    space, table = tiny_table
    builds = []

    def build(*args, **kwargs):
        builds.append(args)
        return table

    monkeypatch.setattr(latency, "build_table", build)
    first = latency.load_or_build(space, 10)
    second = latency.load_or_build(space, 10)
    assert len(builds) == 1 and np.array_equal(first.ms, second.ms)
    path = latency.default_path(space, 10, "onnxruntime", 1)
    doc = json.loads(path.read_text())
    doc["machine"]["onnxruntime"] = "0.0.1"  # an upgrade since the table was measured
    path.write_text(json.dumps(doc))
    messages = []
    latency.load_or_build(space, 10, log=messages.append)
    assert len(builds) == 2 and "rebuilding" in messages[0]


def test_latency_budgets_are_checked(tiny_table):
    space, table = tiny_table
    smallest = table.predict(space.encode(space.smallest()))[0]
    with pytest.raises(ValueError, match=r"below the smallest resnet subnet's .* ms latency"):
        Budgets(space, 10, max_latency=smallest / 2, latency=table)
    with pytest.raises(ValueError, match="needs a latency table"):
        Budgets(space, 10, max_latency=1.0)
    budgets = Budgets(space, 10, max_latency=1.5 * smallest, latency=table)
    X = space.sample(50, np.random.default_rng(3))
    assert np.array_equal(budgets.feasible(X), table.predict(X) <= 1.5 * smallest)


def test_cli_builds_a_table_and_search_refuses_a_foreign_one(tmp_path, capsys):
    table = tmp_path / "table.json"
    argv = ["latency-table", "--space", "resnet", "--resolutions", "12", "--width-mults", "0.25"]
    argv += ["--space-options", '{"kernel_sizes": [3]}', "--calibration", "2"]
    assert main([*argv, "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert "units measured" in out and "smallest subnet" in out
    doc = json.loads(table.read_text())
    assert doc["machine"]["threads"] == 1 and len(doc["rows"]) == len(doc["ms"]) > 5
    doc["machine"]["threads"] = 4
    table.write_text(json.dumps(doc))
    search = ["search", "--space", "resnet", "--resolutions", "12", "--width-mults", "0.25"]
    search += ["--space-options", '{"kernel_sizes": [3]}', "--out", str(tmp_path / "run")]
    assert main([*search, "--max-latency", "5ms", "--latency-table", str(table)]) == 2
    err = capsys.readouterr().err
    assert "--latency-table" in err and "measured elsewhere" in err and "threads 4" in err


def test_parse_time():
    from nat.cli.options import parse_time

    assert parse_time("5ms") == 5 and parse_time("800us") == pytest.approx(0.8)
    assert parse_time("0.01s") == pytest.approx(10) and parse_time("2.5") == 2.5
    with pytest.raises(Exception, match="5ms or 800us"):
        parse_time("fast")


def test_an_int8_table_times_quantised_units_and_is_refused_for_float(tiny_table, tmp_path):
    space, fp32 = tiny_table
    int8 = latency.build_table(space, 10, rounds=1, calibration=0, dynamo=False, precision="int8")
    assert int8.machine["precision"] == "int8" and "precision" not in fp32.machine
    # The units are the same; their times are int8 models' (QDQ nodes), not the float ones.
    assert np.array_equal(int8.rows, fp32.rows) and not np.allclose(int8.ms, fp32.ms)
    path = int8.save(tmp_path / "int8.json")
    assert latency.load_table(path, space, 10, precision="int8").machine == int8.machine
    with pytest.raises(StaleTableError, match="precision 'int8', here None"):
        latency.load_table(path, space, 10, precision="fp32")
    assert latency.default_path(space, 10, "onnxruntime", 1, "int8") != latency.default_path(
        space, 10, "onnxruntime", 1
    )
    with pytest.raises(ValueError, match="int8 latency is measured with onnxruntime"):
        latency.machine("torch", 1, "int8")
