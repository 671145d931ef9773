"""Memory budgets and int8 exports, end to end: a search under a peak-memory and a model-size
budget at int8 hands back models that measure within both, each with a scored int8 file."""

import csv
import json

import numpy as np
import pytest
from conftest import small_space
from test_search import TINY

import nat
from nat.cli import main
from nat.cli.options import parse_bytes
from nat.io.footprint import initializer_bytes, peak_activation_bytes


def _halfway(space, metric: str) -> float:
    ends = np.stack([space.encode(space.smallest()), space.encode(space.largest())])
    low, high = space.costs(ends, 10).metric(metric, "int8")
    return float(low + 0.5 * (high - low))


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    space = small_space("shufflenetv2", **TINY["space_options"])
    budgets = {
        "max_peak_memory": _halfway(space, "peak_memory"),
        "max_model_size": _halfway(space, "model_size"),
    }
    out = tmp_path_factory.mktemp("int8")
    options = {**TINY, "onnx": True, "front_size": 1, "race_size": 1, "finetune_epochs": 1}
    result = nat.search(
        precision="int8", objectives=("model_size",), seed=0, out=out, **budgets, **options
    )
    return out, result, budgets


def test_int8_search_hands_back_models_measured_within_both_budgets(int8_run):
    out, result, budgets = int8_run
    folders = sorted((out / "front").iterdir())
    assert folders and len(folders) == len(result.models)
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        float_onnx = (folder / "model.onnx").read_bytes()
        int8_onnx = (folder / "model.int8.onnx").read_bytes()
        # Measured on the files, not predicted.
        assert peak_activation_bytes(float_onnx, 1) <= budgets["max_peak_memory"]
        assert initializer_bytes(int8_onnx) <= budgets["max_model_size"]
        int8 = config["int8"]
        assert int8["model_size_bytes"] == initializer_bytes(int8_onnx)
        assert config["precision"] == "int8"
        assert config["model_size_bytes"] >= int8["model_size_bytes"]  # analytic: a bound
        for split in ("val", "test"):
            assert 0 <= int8[f"{split}_accuracy"] <= 1
            drop = 100 * (config[f"{split}_accuracy"] - int8[f"{split}_accuracy"])
            assert int8[f"{split}_drop_points"] == pytest.approx(drop, abs=0.01)
        # int8 on digits keeps most of the float accuracy (a broken calibration gives ~10 %).
        assert int8["test_accuracy"] > config["test_accuracy"] - 0.15


def test_int8_scores_reach_pareto_csv_and_the_report(int8_run):
    out, _, _ = int8_run
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    handed = [r for r in rows if r["folder"]]
    assert all(r["int8_test_accuracy"] for r in handed)
    assert all(int(r["model_size_bytes"]) > 0 and int(r["peak_memory_bytes"]) > 0 for r in rows)
    report = (out / "report.md").read_text()
    assert "## int8 models" in report and "bytes at int8" in report
    archive = json.loads((out / "archive.json").read_text())
    assert archive["precision"] == "int8"


def test_memory_budget_flags_parse_bytes_and_refuse_what_no_subnet_fits(tmp_path, capsys):
    assert parse_bytes("256KB") == 256 * 1024
    code = main(
        [
            "search",
            "--data",
            "digits",
            "--space",
            "shufflenetv2",
            "--max-peak-memory",
            "1KB",
            "--precision",
            "int8",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--max-peak-memory" in err and "below the smallest" in err
    assert not (tmp_path / "run" / "run.json").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--data", "digits", "--max-model-size", "lots", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "256KB" in capsys.readouterr().err
