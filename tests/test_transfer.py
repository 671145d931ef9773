"""Train once, search many: a supernet trained for a range of budgets records what a later
search checks, and a search from it takes its space, refuses another, and says when its
budget lies outside what the supernet covers."""

import json

import pytest
from test_probe import _digest, _fails

from nat import RunSpec
from nat.cli import main
from nat.io.checkpoint import read_supernet_header
from nat.transfer import budget_warning

SOURCE = ["--space", "shufflenetv2", "--resolutions", "12,16", "--data", "digits"]
SEARCH = ["--subset", "300", "--pretrain-epochs", "1", "--iterations", "0", "--doe-size", "4"]
SEARCH += ["--population", "8", "--generations", "2", "--finetune-epochs", "0", "--quiet"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("source") / "source.pt"
    argv = ["train-supernet", *SOURCE, "--subset", "300", "--epochs", "1", "--quiet"]
    assert (
        main([*argv, "--budgets", "60k,150k", "--classes", "0,1,2,3,4,5", "--out", str(out)]) == 0
    )
    return out


def test_the_checkpoint_records_what_a_search_checks(source):
    header = read_supernet_header(source)
    meta = header["metadata"]
    assert header["space"] == "shufflenetv2" and header["num_classes"] == 6
    assert meta["budgets"] == [60e3, 150e3] and meta["epochs"] == 1
    assert meta["recipe"]["epochs"] == 1 and meta["data"]["source"] == "digits"
    assert meta["class_names"] == [str(c) for c in range(6)]
    # widths fitted to each budget: more than the three one budget gets
    assert len(header["space_options"]["width_mults"]) > 3


def test_a_search_from_it_takes_its_space_reports_the_source_and_warns_outside_its_range(
    source, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["search", "--checkpoint", str(source), "--data", "digits", *SEARCH]
    assert main([*argv, "--max-params", "1M", "--out", str(out)]) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["space"] == "shufflenetv2"
    assert spec["space_options"] == read_supernet_header(source)["space_options"]
    report = (out / "report.md").read_text()
    assert f"Source supernet: `{source}`" in report and "budgets 60,000, 150,000" in report
    err = capsys.readouterr().err
    assert (
        "--max-params 1,000,000 is outside what" in err and "trained for budgets 60k, 150k" in err
    )
    # Inside the range (with its margins) there is nothing to warn about; below it, there is.
    header = read_supernet_header(source)
    for budget, warned in ((100e3, False), (150e3, False), (1e3, True)):
        checked = RunSpec.from_dict({**spec, "search": {**spec["search"], "max_params": budget}})
        assert (budget_warning(checked, header) is not None) == warned, budget


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--space", "mbv2"], "--space mbv2 conflicts with --checkpoint"),
        (["--resolutions", "8"], "--resolutions: resolutions [8] against [12, 16]"),
    ],
)
def test_a_conflicting_space_is_refused_before_anything(source, tmp_path, capsys, extra, expected):
    before = _digest(source.parent)
    out = tmp_path / "run"
    _fails(
        ["search", "--checkpoint", str(source), *SEARCH, *extra, "--out", str(out)],
        capsys,
        expected,
    )
    assert not out.exists() and _digest(source.parent) == before


def test_warm_start_seeds_the_archive_with_a_previous_front(tmp_path):
    from nat.engine.archive import Archive

    first, second = tmp_path / "first", tmp_path / "second"
    common = [*SOURCE, "--width-mults", "0.25,0.5", *SEARCH, "--max-params", "300k"]
    assert main(["search", *common, "--out", str(first)]) == 0
    # A front of several subnets, as a longer run would have: accuracy rising with size.
    doc = json.loads((first / "archive.json").read_text())
    for entry in doc["entries"]:
        entry["accuracy"] = entry["params"] / 1e6
    (first / "archive.json").write_text(json.dumps(doc))
    assert (
        main(["search", *common, "--seed", "1", "--warm-start", str(first), "--out", str(second)])
        == 0
    )
    previous, archive = Archive.load(first / "archive.json"), Archive.load(second / "archive.json")
    front = {tuple(previous.entries[i].x) for i in previous.front(("params",))}
    seeded = {tuple(e.x) for e in archive.entries if e.source == "warm-start"}
    # every front member not already taken by an earlier group (smallest, largest, heuristic)
    earlier = {
        tuple(e.x) for e in archive.entries if e.source in ("smallest", "largest", "heuristic")
    }
    assert seeded and seeded == front - earlier


def test_warm_start_needs_a_run_folder(tmp_path, capsys):
    _fails(
        ["search", *SOURCE, "--warm-start", str(tmp_path), "--out", str(tmp_path / "r")],
        capsys,
        "--warm-start",
    )


def test_data_parallel_source_training_checks_its_flags_first(tmp_path, capsys):
    out = tmp_path / "source.pt"
    argv = ["train-supernet", *SOURCE, "--subset", "300", "--epochs", "1", "--out", str(out)]
    _fails([*argv, "--workers", "0"], capsys, "--workers: must be at least 1")
    # A killed data-parallel training leaves its checkpoints beside --out: never overwritten.
    (tmp_path / "source.pt.ray-train").mkdir()
    _fails([*argv, "--workers", "2"], capsys, "unfinished data-parallel training", "--resume")
    assert not out.exists()


def test_the_heuristic_strategy_fine_tunes_the_sources_weights(source, tmp_path):
    """With no time to search, a run from a source supernet starts the heuristic's subnets
    from the source's weights, not from fresh ones: each model's inherited accuracy is the
    one its archive entry was scored with, on the supernet."""
    import nat

    result = nat.search(
        checkpoint=str(source),
        data="digits",
        classes=[str(c) for c in range(6)],  # the source's classes: its classifier is kept
        subset=300,
        max_params=150_000,
        time_limit=30.0,
        strategy="heuristic",
        bn_batches=4,
        onnx=False,
        progress=False,
        seed=0,
        out=tmp_path / "run",
    )
    entries = result.archive.entries
    assert result.models and all(m.trained for m in result.models)
    for m in result.models:
        assert entries[m.index].source in ("smallest", "heuristic")
        assert m.inherited_val_accuracy == pytest.approx(entries[m.index].accuracy)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "fine-tuned from the source supernet's weights" in report
