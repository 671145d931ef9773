"""The benchmark suite's quick mode runs end to end, so the scripts never rot."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"
NAMES = (
    "search",
    "heuristic",
    "fidelity",
    "surrogate",
    "speed",
    "growth",
    "quality",
    "recipe",
    "cil",
    "deploy",
    "latency",
    "pruning",
    "multiexit",
    "transfer",
    "scaling",
    "tiny",
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.slow
@pytest.mark.ray
def test_quick_suite_writes_every_table(tmp_path):
    out = tmp_path / "bench"
    done = _run("--quick", "--data", "digits", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in NAMES:
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["machine"]["nproc"] >= 1 and doc["settings"]["subset"] == 600
        assert f"## {name}" in (out / f"{name}.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "Total:" in summary and "NAT / random search HV" in summary

    search = json.loads((out / "search.json").read_text())
    assert [p["seed"] for p in search["per_seed"]] == [0]
    for p in search["per_seed"]:
        methods = p["methods"]
        n = methods["NAT"]["evaluated"]
        # Every search method gets the same number of real evaluations.
        for label in (
            "NSGA-II, real evaluations",
            "Optuna NSGA-II",
            "Optuna TPE",
            "random search",
            "NAT without adaptation",
        ):
            assert methods[label]["evaluated"] == n
        for m in methods.values():
            assert 0 < m["hv"] <= 1.01**2
    assert (out / "search_pareto.png").stat().st_size > 0

    heuristic = json.loads((out / "heuristic.json").read_text())["rows"]
    assert {r["method"] for r in heuristic} == {"heuristic", "searched", "heuristic (scratch)"}
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert len(fidelity["scratch"]) == len(fidelity["inherited"]) == 4
    assert -1 <= fidelity["kendall_tau"] <= 1
    speed = json.loads((out / "speed.json").read_text())
    assert all(r["same_counts"] for r in speed["training"])  # truly equivalent models
    assert speed["ray"]["ray_1"] > 0 and speed["ray"]["ray_2"] > 0
    growth = json.loads((out / "growth.json").read_text())
    assert [r["archive"] for r in growth["by_archive"]] == [8, 16]
    quality = json.loads((out / "quality.json").read_text())
    methods = [r["method"].split(" ")[0] for r in quality["rows"]]
    # three handed-back models of one time-limited search, each against its architecture
    # from scratch (d); the peer in 15 epochs (b), for as long as the search (c, c')
    assert methods.count("(a)") == methods.count("(d)") == 3
    assert methods.count("(b)") == methods.count("(c)") == methods.count("(c')") == 1
    assert methods.count("(e)") == 1  # the heuristic's architecture alone, for as long
    # Every row is judged on the untouched test split; the search stays within its budget.
    assert all(0 <= r["test"] <= 1 and r["params"] <= 3e5 for r in quality["rows"])
    assert all(len(c["(a)"]) == 1 for c in quality["curves"].values())
    assert (out / "quality_minutes_300k.png").stat().st_size > 0
    recipe = json.loads((out / "recipe.json").read_text())["rows"]
    assert [r["recipe"] for r in recipe] == ["flip and crop (the defaults)", "+ EMA"]

    cil = json.loads((out / "cil.json").read_text())["digits"]
    methods = [r["method"].split(" #")[0] for r in cil["rows"]]
    assert methods[:2] == ["feillet 300k", "width-only 300k"]
    assert set(methods[2:]) == {"searched 300k"}  # the front from scratch, its best inherited
    assert [r["inherited"] for r in cil["rows"]][1:] == [False] * (len(methods) - 2) + [True]
    assert cil["missing"][0].startswith("depth-only 300k")  # full width is above 300k
    assert all(len(r["per_state"]) == 3 for r in cil["rows"])

    deploy = json.loads((out / "deploy.json").read_text())["rows"]
    assert sorted(r["space"] for r in deploy) == ["mbv2", "resnet", "shufflenetv2"]
    assert all(r["max_abs_diff"] <= 1e-4 and r["onnxruntime_ms"] > 0 for r in deploy)

    latency = json.loads((out / "latency.json").read_text())["rows"]
    assert sorted(r["space"] for r in latency) == ["mbv2", "resnet", "shufflenetv2"]
    assert all(r["units"] > 0 and len(r["measured_ms"]) == 3 for r in latency)
    assert all(-1 <= r["spearman"] <= 1 and r["median_abs_error"] >= 0 for r in latency)

    pruning = json.loads((out / "pruning.json").read_text())
    assert {r["method"] for r in pruning["rows"]} == {"heuristic", "searched", "pruned-taylor"}
    assert all(r["params"] <= r["budget"] for r in pruning["rows"] if r["params"] is not None)
    transfer = pruning["transfer"]
    assert [t["method"] for t in transfer] == ["fine-tuned, unpruned", "pruned-taylor to 200,000"]
    assert transfer[1]["params"] <= 2e5 < transfer[0]["params"]

    # train once, search many: both searches and both peers, on the target's own test split
    rows = json.loads((out / "transfer.json").read_text())["rows"]
    assert [r["method"].split(" ")[0] for r in rows] == ["(i)", "(ii)", "(iii)", "(iv)"]
    assert all(0 <= r["test"] <= 1 and r["params"] <= 3e5 for r in rows)

    multiexit_doc = json.loads((out / "multiexit.json").read_text())
    (multiexit,) = multiexit_doc["runs"]
    assert len(multiexit["curve"]) == 4 and len(multiexit["exit_macs"]) >= 2
    assert len(multiexit["versus_front"]) >= 1
    # The matched comparison: every front subnet trained as long as the multi-exit model.
    trained = multiexit_doc["front_trained"]
    assert sorted((t["params"], t["macs"]) for t in trained) == sorted(
        (f["params"], f["macs"]) for f in multiexit["versus_front"]
    )
    assert all(len(t["test"]) == 1 and 0 <= t["test"][0] <= 1 for t in trained)

    # A second run of one benchmark reuses the cached pre-trained supernet and NAT run.
    again = _run("--quick", "--data", "digits", "--out", str(out), "heuristic")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "iteration 1" not in again.stdout + again.stderr


def test_bad_arguments_are_named(capsys):
    # In process: a subprocess would spend its time importing torch and Ray.
    spec = importlib.util.spec_from_file_location("bench_cli", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for argv, message in [
        (["--quick", "--data", "digits", "nonsense"], "unknown benchmark(s) ['nonsense']"),
        (["--data", "/no/such/cifar.tar.gz"], "/no/such/cifar.tar.gz not found"),
        (["--data", "digits", "--set", "quality_spaces=[1]"], "'quality_spaces=[1]': give NAME"),
        (["--data", "digits", "--set", "quality_space=resnet"], "'resnet' is not JSON"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            bench.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_settings_overrides_become_the_settings_values():
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmarks import parse_overrides

    assert parse_overrides(['quality_space="resnet"', "quality_limits=[900, 1800]"]) == {
        "quality_space": "resnet",
        "quality_limits": (900, 1800),  # a tuple, as the settings hold it
    }
