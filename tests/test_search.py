import csv
import dataclasses
import json

import numpy as np
import pytest
from conftest import small_space
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

import nat
from nat.cli import main
from nat.engine.problem import Budgets
from nat.latency import build_table, load_table

TINY = dict(
    space="shufflenetv2",
    data="digits",
    subset=500,
    pretrain_epochs=1,
    iterations=2,
    doe_size=6,
    candidates=3,
    population=12,
    generations=4,
    adapt_epochs=1,
    bn_batches=2,
    finetune_epochs=2,
    front_size=2,
    race_size=2,
    finetune_distill_weight=0.5,  # the teacher path; the default trains on labels only
    finetune_lr=0.01,  # 12 steps on 400 images: the default 0.1 is for real schedules
    progress=False,
    onnx=False,  # an export costs seconds; test_deploy and one run below check model.onnx
    space_options={"resolutions": [12, 16], "width_mults": [0.25, 0.5]},
)


def _budget() -> float:
    space = small_space("shufflenetv2", resolutions=(12, 16))
    low, high = (space.complexity(a, 10)[0] for a in (space.smallest(), space.largest()))
    return low + 0.4 * (high - low)


@pytest.fixture(scope="module")
def latency_budget(tmp_path_factory):
    """(table file, latency budget): a table measured here, and a budget 70 % of the way from
    the space's fastest subnet to its slowest (predicted)."""
    space = small_space("shufflenetv2", **TINY["space_options"])
    table = build_table(space, 10, rounds=2, calibration=2, dynamo=False)
    # Measured times vary from run to run, and so would the subnets within the budget and
    # the race they lead to: the units keep their measured rows, with times that depend on
    # the rows alone (the prediction and the budget are what these tests exercise).
    table = dataclasses.replace(
        table, ms=1e-3 * table.rows.sum(axis=1), call_ms=0.01, scale=1.0, power=1.0
    )
    low, high = table.predict(
        np.stack([space.encode(space.smallest()), space.encode(space.largest())])
    )
    path = table.save(tmp_path_factory.mktemp("latency") / "table.json")
    return str(path), float(low + 0.7 * (high - low))


@pytest.fixture(scope="module")
def run(tmp_path_factory, latency_budget):
    out = tmp_path_factory.mktemp("search")
    table, max_latency = latency_budget
    options = dict(max_params=_budget(), max_latency=max_latency, latency_table=table, seed=0)
    return nat.search(out=out, **options, **TINY), out


def test_search_writes_every_output(run):
    result, out = run
    for name in (
        "archive.json",
        "pareto.csv",
        "pareto.png",
        "history.csv",
        "report.md",
        "supernet.pt",
    ):
        assert (out / name).is_file(), name
    assert len(result.front) >= 1 and len(result.models) == 2
    for rank in range(len(result.models)):
        folder = out / "front" / f"{rank:02d}"
        assert (folder / "config.json").is_file() and (folder / "weights.pt").is_file()
    doc = json.loads((out / "archive.json").read_text())
    assert len(doc["entries"]) == len(result.archive)
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # header, initial archive, two iterations
    assert "Heuristic vs searched" in (out / "report.md").read_text()


def test_every_subnet_respects_the_budget_and_the_front_is_non_dominated(run):
    result, out = run
    budget = _budget()
    assert all(e.params <= budget for e in result.archive.entries)
    # The latency budget holds for every evaluated subnet, as the table predicts it.
    max_latency = json.loads((out / "run.json").read_text())["search"]["max_latency"]
    latency = [e.latency for e in result.archive.entries]
    assert all(0 < ms <= max_latency for ms in latency)
    assert "latency ms" in (out / "report.md").read_text()
    sources = {e.source for e in result.archive.entries}
    assert {"smallest", "heuristic", "doe", "search"} <= sources
    F = result.archive.objectives(("params",))[result.front]
    assert len(NonDominatedSorting().do(F, only_non_dominated_front=True)) == len(F)
    assert all(np.isfinite(e.accuracy) and 0 <= e.accuracy <= 1 for e in result.archive.entries)
    hv = [r["hv"] for r in result.history]
    assert all(0 < h <= 1.01**2 for h in hv)


def test_the_largest_subnet_within_the_budgets_seeds_the_archive(run, latency_budget):
    # The anchor pre-training trains on every step is evaluated, so the front reaches the
    # budget: on digits random draws stopped at 234k-398k of 400k, 1-5 points below it.
    result, _ = run
    table, max_latency = latency_budget
    space = result.archive.space
    budgets = Budgets(space, 10, _budget(), None, max_latency, load_table(table, space, 10))
    largest = [e for e in result.archive.entries if e.source == "largest"]
    assert len(largest) == 1
    x = np.asarray(largest[0].x)
    assert (x == space.encode(budgets.largest())).all() and budgets.feasible(x[None])[0]
    assert x.tolist() != space.encode(space.largest()).tolist()  # the space's largest is over
    grown = np.repeat(x[None], len(x), axis=0) + np.eye(len(x), dtype=x.dtype)
    grown = space.repair(grown[(x < space.upper)])
    changed = (grown != x).any(axis=1)
    assert changed.any() and not budgets.feasible(grown[changed]).any()


def test_same_seed_gives_the_same_archive(run, latency_budget, tmp_path):
    result, _ = run
    table, max_latency = latency_budget
    options = dict(max_params=_budget(), max_latency=max_latency, latency_table=table, seed=0)
    again = nat.search(out=tmp_path, **options, **TINY)
    assert [(e.x, e.accuracy) for e in again.archive.entries] == [
        (e.x, e.accuracy) for e in result.archive.entries
    ]


def test_impossible_budget_is_a_clear_error():
    space = small_space("shufflenetv2")
    with pytest.raises(ValueError, match="below the smallest shufflenetv2 subnet"):
        Budgets(space, 10, max_params=1000)


def test_cli_search_reports_the_front(tmp_path, capsys):
    argv = [
        "search",
        "--space",
        "shufflenetv2",
        "--resolutions",
        "12",
        "--width-mults",
        "0.25",
        "--subset",
        "300",
        "--pretrain-epochs",
        "1",
        "--iterations",
        "1",
        "--doe-size",
        "4",
        "--candidates",
        "2",
        "--population",
        "8",
        "--generations",
        "2",
        "--adapt-epochs",
        "0",
        "--bn-batches",
        "2",
        "--finetune-epochs",  # the default 18 train for 20 s here: the report is what is tested
        "2",
        "--max-params",
        "1M",
        "--objectives",
        "params,macs",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "handed back:" in out and "MACs" in out
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 1000
    assert main(argv[:-2] + ["--max-params", "1k", "--out", str(tmp_path / "bad")]) == 2
    assert "below the smallest" in capsys.readouterr().err


def test_the_handed_back_front_takes_the_best_subnet_within_each_target():
    from nat.handback import choose_targets

    sizes = np.array([50.0, 90.0, 120.0, 240.0, 260.0, 400.0])
    accuracy = np.array([0.50, 0.60, 0.65, 0.70, 0.72, 0.80])
    front = [0, 1, 2, 3, 4, 5]
    # targets 100 and 200 of a 400 budget, the most accurate within each
    assert choose_targets(sizes, accuracy, front, 400.0, 3) == [(100.0, 1), (200.0, 2)]
    assert choose_targets(sizes, accuracy, front, 400.0, 2) == [(200.0, 2)]
    assert choose_targets(sizes, accuracy, front, 400.0, 1) == []
    # nothing within the smallest target: the front's smallest, and each subnet once
    assert choose_targets(sizes, accuracy, [3, 4, 5], 400.0, 3) == [(100.0, 3), (200.0, 4)]


def test_candidates_spread_over_the_front_by_size_not_by_rank():
    from nat.engine.loop import _spread

    # a predicted front crowded near its smallest size, as NSGA-II's population often is
    sizes = [1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.5, 2.0, 2.5, 3.0]
    F = np.array([[1 - 0.1 * s, s] for s in sizes])
    picks = _spread(F, 4)
    assert [sizes[i] for i in picks] == [1.0, 1.5, 2.5, 3.0]
    assert len(set(_spread(F, 8))) == 8  # k distinct points even where targets collide
    assert sorted(_spread(F[:3], 4)) == [0, 1, 2]  # fewer points than asked: all of them


def test_parse_size():
    from nat.cli.options import parse_size

    assert parse_size("500k") == 500_000
    assert parse_size("2.5M") == 2_500_000
    assert parse_size("1G") == 1e9
    with pytest.raises(Exception, match="suffix"):
        parse_size("5 apples")


def test_compare_writes_a_table_for_every_method(run):
    from nat.compare import compare

    result, out = run
    budget = _budget()
    rows = compare(out, [budget], seeds=(0, 1), finetune_epochs=1, bn_batches=2, progress=False)
    assert [r["method"] for r in rows] == ["heuristic", "width-only", "depth-only", "searched"]
    for r in rows:
        if r["params"] is not None:
            assert r["params"] <= budget
            mean, std = r["finetuned"]
            assert 0 <= mean <= 1 and std >= 0
    heuristic = rows[0]["arch"]
    assert all(len(s["blocks"]) == 1 for s in heuristic["stages"])  # shallowest depth
    best = max((e for e in result.archive.entries if e.params <= budget), key=lambda e: e.accuracy)
    assert rows[3]["params"] == best.params
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (out / name).is_file()
    assert "± " in (out / "compare.md").read_text()


def test_compare_trains_the_heuristic_from_scratch_on_request(run):
    from nat.compare import SCRATCH, compare

    _, out = run
    budget = _budget()
    rows = compare(
        out,
        [budget],
        seeds=(0,),
        finetune_epochs=1,
        bn_batches=2,
        progress=False,
        scratch=True,
        methods=("heuristic", "searched"),
    )
    assert [r["method"] for r in rows] == ["heuristic", "searched", SCRATCH]
    heuristic, scratch = rows[0], rows[2]
    assert scratch["arch"] == heuristic["arch"]  # the same architecture, other weights
    assert scratch["inherited"] is None and heuristic["inherited"] is not None
    assert 0 <= scratch["finetuned"][0] <= 1
    assert SCRATCH in (out / "compare.md").read_text()
    with pytest.raises(ValueError, match="unknown methods"):
        compare(out, [budget], methods=("best",))


def test_the_front_is_handed_back_trained_and_its_exports_score_as_reported(run):
    import torch

    import supernets
    from nat.folder import open_run
    from nat.prepare import load_data
    from nat.report import handed_back
    from nat.training.evaluate import SubnetEvaluator
    from nat.training.train import evaluate

    result, out = run
    handed = handed_back(result)
    assert len(handed) == 2 and all(m.trained_val_accuracy is not None for _, m in handed)
    for _, m in handed:  # trained weights are exported only where they beat the inherited
        if m.trained:
            assert m.val_accuracy == m.trained_val_accuracy > m.inherited_val_accuracy
        else:
            assert m.val_accuracy == m.inherited_val_accuracy >= m.trained_val_accuracy
    assert any(m.trained for _, m in handed)  # it learned
    # The model at the full budget was raced for, the heuristic's subnet among the entrants.
    entries = result.archive.entries
    top = handed[-1][1]
    entrants = [c["entry"] for c in top.race[0]["candidates"]]
    assert entries[entrants[0]].source == "heuristic" and top.index in entrants
    test = SubnetEvaluator.batches(load_data(open_run(out)).test)
    rows = list(csv.DictReader(open(out / "pareto.csv")))
    assert [r["folder"] for r in rows if r["folder"]] == [f for f, _ in handed]
    # the rest of the front is listed, marked untrained, with no folder
    untrained = [r for r in rows if not r["folder"]]
    assert all(r["trained"] == "False" and r["on_front"] == "True" for r in untrained)
    assert len(rows) == len(handed) + len(set(result.front) - {m.index for _, m in handed})
    for folder, m in handed:
        config = json.loads((out / folder / "config.json").read_text())
        model = supernets.build_static(m.arch, 10)
        model.load_state_dict(torch.load(out / folder / "weights.pt", weights_only=True))
        assert evaluate(model, test, m.arch.resolution) == config["test_accuracy"]
    report = (out / "report.md").read_text()
    best = max(handed, key=lambda fm: fm[1].val_accuracy)[0]
    assert "The race" in report and f"Best on validation: `{best}`" in report


def test_finetune_epochs_0_exports_the_inherited_weights(tmp_path):
    import torch

    from nat.data import resize_batch
    from nat.folder import open_run
    from nat.io.checkpoint import load_supernet
    from nat.io.deploy import onnx_session, sample_images
    from nat.prepare import load_data
    from nat.training.evaluate import SubnetEvaluator

    options = {**TINY, "finetune_epochs": 0, "onnx": True}
    again = nat.search(max_params=_budget(), seed=0, out=tmp_path, **options)
    assert all(m.epochs == 0 and m.seconds == 0 for m in again.models)
    supernet, _ = load_supernet(tmp_path / "supernet.pt")
    data = load_data(open_run(tmp_path))
    evaluator = SubnetEvaluator(data, 2, 64, 0)
    images = sample_images(data.test, 8)
    for rank, m in enumerate(again.models):
        _, inherited = evaluator.evaluate_one(supernet, m.arch)
        folder = tmp_path / "front" / f"{rank:02d}"
        exported = torch.load(folder / "weights.pt", weights_only=True)
        assert all(torch.equal(v, exported[k]) for k, v in inherited.state_dict().items())
        # model.onnx computes what the exported weights compute, on real images
        batch = resize_batch(images, m.arch.resolution)
        (logits,) = onnx_session(folder / "model.onnx").run(None, {"images": batch.numpy()})
        with torch.no_grad():
            expected = inherited.cpu().eval()(batch).numpy()
        assert abs(logits - expected).max() <= 1e-4


def test_multi_exit_on_the_front_writes_its_curve_and_model(run, capsys):
    from nat.io.deploy import onnx_session
    from nat.multiexit import load_multi_exit

    _, out = run
    argv = ["multi-exit", "--run", str(out), "--epochs", "1", "--points", "4", "--no-progress"]
    assert main(argv) == 0
    folder = out / "multi-exit"
    doc = json.loads((folder / "multiexit.json").read_text())
    assert doc["exit_stages"] == [0, 1]  # one exit per spatial scale, the last excepted
    costs = doc["exit_macs"]
    assert len(costs) == 3 and costs == sorted(costs)
    curve = doc["curve"]
    assert len(curve) == 4 and curve[0]["target_macs"] == costs[0]
    for point in curve:  # within the target on validation, where the thresholds were fitted
        assert point["val"]["expected_macs"] <= point["target_macs"] + 1e-6
        assert 0 <= point["test"]["accuracy"] <= 1
    assert curve[-1]["test"]["fractions"][-1] == 1  # the full target: all reach the last exit
    front = sorted(out.glob("front/[0-9][0-9]"))
    assert len(doc["versus_front"]) == len(front)
    for name in ("multiexit.md", "multiexit.png", "weights.pt", "model.onnx"):
        assert (folder / name).is_file(), name
    assert "Against the single-exit front" in capsys.readouterr().out
    model = load_multi_exit(folder)
    assert model.exit_stages == (0, 1)
    outputs = [o.name for o in onnx_session(str(folder / "model.onnx")).get_outputs()]
    assert outputs == ["logits_0", "logits_1", "logits_2"] and doc["onnx_max_abs_diff"] <= 1e-4

    # Any exported subnet, on data given here; the output goes beside it.
    config = front[0] / "config.json"
    again = ["multi-exit", "--config", str(config), "--subset", "300", "--epochs", "1"]
    assert main([*again, "--points", "2", "--no-onnx", "--no-progress"]) == 0
    assert len(json.loads((front[0] / "multi-exit" / "multiexit.json").read_text())["curve"]) == 2
    assert main([*argv[:3], "--exits", "5"]) == 2
    assert "no stage 5 to put an exit after" in capsys.readouterr().err
    assert main(["multi-exit", "--run", str(out), "--config", "x"]) == 2
    assert "either --run DIR" in capsys.readouterr().err


def test_compares_default_methods_are_the_heuristics_and_the_search():
    from nat.compare import KNOWN, METHODS
    from nat.recipes import COMPARE

    assert COMPARE.methods == (*METHODS, "searched")
    assert set(COMPARE.methods) <= set(KNOWN)
