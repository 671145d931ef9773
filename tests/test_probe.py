"""Bad input and faults, as a new user meets them: a one-line error with exit code 2 (130 for
Ctrl-C) before any training, and an existing run folder left byte-identical."""

import hashlib
import json
import os
import shutil
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
        (["--seed", "-5"], "--seed: must be at least 0"),
        (["--seed", str(2**70)], "--seed: must be at most"),
        (["--split-seed", "-1"], "--split-seed"),
        (["--doe-size", "1e30"], "--doe-size: must be at most"),
        (["--population", "1000000000"], "--population: must be at most"),
        (["--image-size", "100000"], "--image-size: must be at most"),
        (["--resolutions", "100000"], "--resolutions: must be 8 to 1024"),
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


def test_a_budget_past_anything_the_space_holds_is_refused(tmp_path, capsys):
    # Its widths fitted to the budget, the supernet would be 4x wide at full depth.
    out = tmp_path / "r"
    argv = ["search", *FAST[:4], "--subset", "300", "--max-params", "1e308", "--out", str(out)]
    _fails(argv, capsys, "--max-params", "above the largest")
    assert not out.exists()


def _config_with(finished_run, tmp_path, change) -> Path:
    folder = tmp_path / "subnet"
    shutil.copytree(sorted((finished_run / "front").iterdir())[0], folder)
    doc = json.loads((folder / "config.json").read_text())
    change(doc["arch"])
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


def _payload(path: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"weights": Payload()}, path)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a["stages"][-1].update(channels=10**6),
        lambda a: a["stages"][0].update(blocks=a["stages"][0]["blocks"] * 10**4),
        lambda a: a["stages"][0].update(channels=-8),
        lambda a: a.update(resolution=10**5),
        lambda a: a.update(resolution=float("nan")),
        "payload",
    ],
)
def test_configs_are_checked_before_anything_is_built(finished_run, tmp_path, capsys, change):
    if change == "payload":
        folder = _config_with(finished_run, tmp_path, lambda a: None)
        _payload(folder / "weights.pt")
    else:
        folder = _config_with(finished_run, tmp_path, change)
    data, pruned = ["--data", "digits", "--subset", "300"], tmp_path / "p"
    for argv in (
        ["multi-exit", "--config", str(folder), *data, "--out", str(tmp_path / "m")],
        ["prune", "--model", str(folder), *data, "--max-params", "1k", "--out", str(pruned)],
        ["cil", "--config", str(folder), "--inherit", *data, "--out", str(tmp_path / "c")],
    ):
        started = time.perf_counter()
        err = _fails(argv, capsys, str(folder))
        assert "weights_only" not in err and "payload ran" not in capsys.readouterr().out
        assert time.perf_counter() - started < 30, argv  # refused, not built first


def test_prune_refuses_a_model_already_within_the_budget(finished_run, tmp_path, capsys):
    folder = sorted((finished_run / "front").iterdir())[0]
    out = tmp_path / "p"
    argv = ["prune", "--model", str(folder), "--data", "digits", "--max-params", "1G"]
    _fails([*argv, "--out", str(out)], capsys, "--max-params", "nothing to prune")
    assert not out.exists()


def test_sample_random_without_a_seed_uses_the_default(finished_run, tmp_path):
    argv = ["sample", "--checkpoint", str(finished_run / "supernet.pt"), "--random"]
    argv += ["--data", "digits", "--subset", "300", "--export", str(tmp_path / "x"), "--quiet"]
    assert main(argv) == 0
    assert (tmp_path / "x" / "config.json").is_file()


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("nat.folder.shutil.disk_usage", lambda path: usage(10**9, 10**9, 10**5))
    out = tmp_path / "r"
    _fails(["search", *FAST, "--out", str(out)], capsys, "--out", "MB free")
    assert not out.exists()


def test_a_full_disk_names_the_file_it_was_writing(tmp_path):
    import errno

    from nat.io.files import atomic_write

    def fill(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"no space left on the disk of {tmp_path}.*archive.json"):
        atomic_write(tmp_path / "archive.json", fill)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_from_the_environment_is_checked_before_torch(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    code = (
        "import sys\nfrom nat.cli import main\n"
        f"rc = main({['search', *FAST, '--out', str(tmp_path / 'r')]!r})\n"
        "sys.exit(rc if 'torch' not in sys.modules else 99)\n"
    )
    env = {**os.environ, "NAT_CACHE_DIR": str(file)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "NAT_CACHE_DIR" in result.stderr and str(file) in result.stderr


def test_latency_table_checks_where_it_writes_before_measuring(tmp_path, capsys):
    started = time.perf_counter()
    _fails(["latency-table", "--space", "mbv2", "--out", str(tmp_path)], capsys, "is a folder")
    file = tmp_path / "a-file"
    file.write_text("x")
    _fails(["latency-table", "--out", str(file / "table.json")], capsys, "--out")
    assert time.perf_counter() - started < 30
