"""Bad input and faults, as a new user meets them: a one-line error with exit code 2 (130 for
Ctrl-C) before any training, and an existing run folder left byte-identical."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nat.cli import main

FAST = [
    "--space",
    "shufflenetv2",
    "--resolutions",
    "12,16",
    "--width-mults",
    "0.25,0.5",
    "--subset",
    "300",
    "--pretrain-epochs",
    "1",
    "--iterations",
    "0",
    "--doe-size",
    "2",
    "--bn-batches",
    "1",
    "--adapt-epochs",
    "0",
    "--no-onnx",
    "--quiet",
]


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    assert main(["search", *FAST, "--out", str(out)]) == 0
    return out


def _fails(argv, capsys, *expected, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--doe-size", "0"], "--doe-size"),
        (["--iterations", "-1"], "--iterations"),
        (["--candidates", "0"], "--candidates"),
        (["--max-params", "1k"], "below the smallest"),
        (["--address", "127.0.0.1:1"], "--address"),
        (["--resolutions", ""], "--resolutions"),
        (["--width-mults", "nan"], "--width-mults"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--space-options", '{"foo": 1}'], "valid keys"),
        (["--space-options", '{"kernel_sizes": "357"}'], "kernel_sizes"),
        (["--data", "no/such/folder"], "--data"),
        ([], "already holds a run"),
    ],
)
def test_bad_search_options_leave_an_existing_run_untouched(finished_run, capsys, extra, expected):
    # --overwrite takes every check up to the start of work: none may touch the folder
    overwrite = ["--overwrite"] if extra else []
    before = _digest(finished_run)
    _fails(["search", *FAST, "--out", str(finished_run), *extra, *overwrite], capsys, expected)
    assert _digest(finished_run) == before


def test_a_run_can_be_overwritten_or_rerun_from_its_spec(finished_run, tmp_path, capsys):
    spec = json.loads((finished_run / "run.json").read_text())
    other = tmp_path / "again"
    assert (
        main(["search", "--spec", str(finished_run / "run.json"), "--out", str(other), "--quiet"])
        == 0
    )
    again = json.loads((other / "run.json").read_text())
    # the same settings; the timing is each run's own record
    assert {**again, "out": None, "timing": None} == {**spec, "out": None, "timing": None}
    assert again["timing"]["wall"] > 0
    assert (
        json.loads((other / "archive.json").read_text())["entries"]
        == json.loads((finished_run / "archive.json").read_text())["entries"]
    )
    assert main(["search", *FAST, "--out", str(other), "--overwrite"]) == 0


@pytest.mark.skipif(os.geteuid() != 0 and sys.platform != "linux", reason="needs /proc")
@pytest.mark.parametrize(
    "argv",
    [
        ["search", *FAST, "--out", "{file}"],
        ["search", *FAST, "--out", "/proc/nat-run"],
        ["search", *FAST, "--cache-dir", "{file}", "--out", "{tmp}/r"],
        ["train-supernet", *FAST[:6], "--out", "{tmp}"],
    ],
)
def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys, argv):
    file = tmp_path / "a-file"
    file.write_text("x")
    argv = [a.format(file=file, tmp=tmp_path) for a in argv]
    _fails(argv, capsys, "error")
    assert file.read_text() == "x"


def test_resume_refuses_changed_settings(finished_run, capsys):
    _fails(["search", "--resume", str(finished_run), "--iterations", "9"], capsys, "--iterations")


def test_sample_refuses_a_non_empty_export_and_bad_configs(finished_run, tmp_path, capsys):
    checkpoint = str(finished_run / "supernet.pt")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _fails(
        ["sample", "--checkpoint", checkpoint, "--largest", "--export", str(full)],
        capsys,
        "not empty",
    )
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    for text in ("[1, 2]", "null", "{not json"):
        config = tmp_path / "config.json"
        config.write_text(text)
        _fails(
            [
                "sample",
                "--checkpoint",
                checkpoint,
                "--config",
                str(config),
                "--export",
                str(tmp_path / "x"),
            ],
            capsys,
            str(config),
        )


def test_compare_refuses_negative_epochs_and_budgets_nothing_fits(finished_run, capsys):
    before = _digest(finished_run)
    _fails(
        ["compare", "--run", str(finished_run), "--budgets", "100k", "--finetune-epochs", "-1"],
        capsys,
        "--finetune-epochs",
    )
    _fails(["compare", "--run", str(finished_run), "--budgets", "1k"], capsys, "nothing fits")
    assert _digest(finished_run) == before


def test_compare_without_fine_tuning_scores_the_recalibrated_inherited_model(finished_run):
    from nat.compare import compare

    rows = compare(
        finished_run,
        [1e6],
        seeds=(0,),
        finetune_epochs=0,
        bn_batches=1,
        progress=False,
        methods=("searched",),
    )
    (row,) = rows
    assert row["finetuned"] == row["inherited"]  # was chance level: BatchNorm not recalibrated


def test_device_cuda_without_cuda_is_refused(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails(["search", *FAST, "--device", "cuda", "--out", str(tmp_path / "r")], capsys, "--device")
    assert not (tmp_path / "r").exists()


def test_ctrl_c_is_exit_130_with_one_line(tmp_path):
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "nat.cli",
        "search",
        *FAST,
        "--pretrain-epochs",
        "50",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into pre-training
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "nat search: interrupted"


@pytest.mark.parametrize(
    "extra",
    [
        ["--doe-size", "0"],
        ["--max-params", "1k"],
        ["--address", "127.0.0.1:1"],
        ["--resolutions", ""],
        ["--data", "no/such/folder"],
    ],
)
def test_option_errors_come_before_torch_is_even_imported(tmp_path, extra):
    # Importing torch alone takes seconds: an error raised without it cannot have trained.
    code = (
        "import sys\nfrom nat.cli import main\n"
        f"rc = main({['search', *FAST, '--out', str(tmp_path / 'r'), *extra]!r})\n"
        "sys.exit(rc if 'torch' not in sys.modules else 99)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
