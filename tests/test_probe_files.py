"""A run's own files, as the second probe found them at risk: a command aimed into a run's
folders, a resume of a finished run and a resume from a damaged snapshot are each a one-line
error (exit 2) that leaves the run byte-identical."""

import json
import shutil

import pytest
from test_probe import FAST, _digest, _fails

from nat.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("files") / "run"
    assert main(["search", *FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture
def unfinished(run, tmp_path):
    """A copy of the run as a kill after its first snapshot leaves it: no timing in run.json."""
    out = tmp_path / "unfinished"
    shutil.copytree(run, out)
    doc = json.loads((out / "run.json").read_text())
    doc.pop("timing")
    (out / "run.json").write_text(json.dumps(doc))
    return out


def test_commands_aimed_into_a_runs_folders_are_refused(run, tmp_path, capsys):
    before = _digest(run)
    front = sorted((run / "front").iterdir())
    prune = ["prune", "--model", str(front[-1]), "--data", "digits", "--max-params", "1k"]
    cases = [
        (["train-supernet", *FAST[:6], "--resume", "--out", str(run / "supernet.pt")], "run "),
        (["multi-exit", "--config", str(front[0]), "--out", str(front[0])], "did not write"),
        ([*prune, "--out", str(front[-1])], "did not write"),
        (["search", "--resume", str(run), "--quiet"], "finished run"),
    ]
    for argv, expected in cases:
        _fails(argv, capsys, expected)
        assert _digest(run) == before, argv


def test_train_supernet_resume_refuses_a_checkpoint_without_training_state(run, tmp_path, capsys):
    finished = tmp_path / "finished.pt"
    shutil.copy(run / "supernet.pt", finished)
    data = finished.read_bytes()
    _fails(["train-supernet", *FAST[:6], "--out", str(finished), "--resume"], capsys, "no training")
    assert finished.read_bytes() == data


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda s: "{not json", "corrupt"),
        (lambda s: json.dumps({**s, "history": []}), "history"),
        (lambda s: json.dumps({**s, "rng": 5}), "corrupt"),
        (lambda s: json.dumps({**s, "supernet": "../../run.json"}), "snapshot's file name"),
    ],
)
def test_a_damaged_resume_state_leaves_the_run_untouched(unfinished, capsys, damage, expected):
    state = unfinished / "resume" / "state.json"
    state.write_text(damage(json.loads(state.read_text())))
    before = _digest(unfinished)
    _fails(["search", "--resume", str(unfinished), "--quiet"], capsys, expected)
    assert _digest(unfinished) == before


@pytest.mark.parametrize("name", ["archive.json", "supernet.pt"])
def test_a_finished_run_with_a_truncated_output_names_it(run, tmp_path, capsys, name):
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / name).write_bytes((damaged / name).read_bytes()[:200])
    before = _digest(damaged)
    _fails(["search", "--resume", str(damaged), "--quiet"], capsys, f"{name} is damaged")
    assert _digest(damaged) == before


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate", "snapshot cannot be read"),
        ("missing", "snapshot cannot be read"),
        ("payload", "snapshot cannot be read"),
        ("another space", "another space"),
        ("delete state", "resume"),
    ],
)
def test_a_damaged_snapshot_leaves_the_run_untouched(
    unfinished, tmp_path, capsys, damage, expected
):
    import torch

    import search_spaces
    from nat.io.checkpoint import save_supernet
    from supernets import build_supernet

    folder = unfinished / "resume"
    weights = next(folder.glob("supernet-*.pt"))
    marker = tmp_path / "payload-ran"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing":
        weights.unlink()
    elif damage == "payload":
        torch.save({"format": "x", "state_dict": _Payload(marker)}, weights)
    elif damage == "another space":  # the run's family at its default widths, not 0.25/0.5
        save_supernet(weights, build_supernet(search_spaces.get("shufflenetv2"), 10))
    else:
        (folder / "state.json").unlink()
    before = _digest(unfinished)
    _fails(["search", "--resume", str(unfinished), "--quiet"], capsys, expected)
    assert _digest(unfinished) == before
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "payload"])
def test_a_damaged_pretraining_checkpoint_is_refused_on_resume(run, tmp_path, capsys, damage):
    """A run killed in pre-training holds run.json and pretrain.pt alone; a damaged
    pretrain.pt is refused, not silently trained over."""
    import torch

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".lock").touch()  # left by the killed run's lock, as in every run folder
    doc = json.loads((run / "run.json").read_text())
    doc.pop("timing")
    (killed / "run.json").write_text(json.dumps(doc))
    marker = tmp_path / "payload-ran"
    if damage == "truncated":
        (killed / "pretrain.pt").write_bytes((run / "supernet.pt").read_bytes()[:4000])
    else:
        torch.save({"metadata": "{}", "training_state": _Payload(marker)}, killed / "pretrain.pt")
    before = _digest(killed)
    _fails(["search", "--resume", str(killed), "--quiet"], capsys, "cannot be resumed")
    assert _digest(killed) == before
    assert not marker.exists()


def test_a_run_overwritten_over_symlinks_leaves_their_targets_alone(run, tmp_path):
    """Outputs that are links (a report, the front folder) are replaced, never written
    through."""
    out, elsewhere = tmp_path / "linked", tmp_path / "elsewhere"
    shutil.copytree(run, out)
    elsewhere.mkdir()
    (out / "front").rename(elsewhere / "front")
    (out / "front").symlink_to(elsewhere / "front", target_is_directory=True)
    (out / "report.md").rename(elsewhere / "report.md")
    (out / "report.md").symlink_to(elsewhere / "report.md")
    before = _digest(elsewhere)
    assert main(["search", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert _digest(elsewhere) == before
    assert not (out / "front").is_symlink() and (out / "front" / "00" / "config.json").is_file()
    assert not (out / "report.md").is_symlink()


@pytest.fixture
def held(tmp_path):
    """Hold a folder's run lock from another process, as a search still running would."""
    import subprocess
    import sys

    procs = []

    def hold(folder):
        folder.mkdir(parents=True, exist_ok=True)
        code = (
            "import sys, time; from filelock import FileLock; "
            "lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder / ".lock")], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_folder_in_use_is_refused(unfinished, tmp_path, held, capsys):
    held(unfinished)
    before = _digest(unfinished)
    _fails(["search", "--resume", str(unfinished), "--quiet"], capsys, "another nat search")
    assert _digest(unfinished) == before
    fresh = tmp_path / "fresh"
    held(fresh)
    _fails(["search", *FAST, "--out", str(fresh)], capsys, "another nat search", "--out")
    assert [p.name for p in fresh.iterdir()] == [".lock"]


# Run as a script in its own process: the CLI, killed by SIGKILL right after the first
# handed-back model is exported (no Python cleanup runs, as with kill -9).
_KILLED_AFTER_FIRST_EXPORT = """
import os, signal, sys
import nat.report as report
real = report.export_subnet
def export_then_die(*args, **kwargs):
    path = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
report.export_subnet = export_then_die
from nat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_during_export_resumes_complete_and_consistent(tmp_path):
    import csv
    import subprocess
    import sys

    from nat.io.checkpoint import load_subnet

    out = tmp_path / "run"
    argv = [a for a in FAST if a != "--no-onnx"]  # the ONNX files are part of an export
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_FIRST_EXPORT, "search", *argv, "--out", str(out)],
        capture_output=True,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert [p.name for p in (out / "front").iterdir()] == ["00"]  # killed mid-export
    assert not (out / "report.md").exists()
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    with open(out / "pareto.csv") as f:
        listed = sorted(r["folder"] for r in csv.DictReader(f) if r["folder"])
    folders = sorted((out / "front").iterdir())
    assert listed == [f"front/{p.name}" for p in folders] and len(folders) > 1
    for folder in folders:
        assert {"config.json", "weights.pt", "model.onnx"} <= {p.name for p in folder.iterdir()}
        _, config = load_subnet(folder)  # the weights fit the config's architecture
        assert config["trained"] and config["test_accuracy"] is not None
    assert "timing" in json.loads((out / "run.json").read_text())
    assert (out / "report.md").is_file()
