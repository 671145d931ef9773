"""Run folders, checked before anything slow is imported: ``nat search`` says what is wrong
with its settings or its ``--out`` in well under a second, not after loading torch."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

import search_spaces

from .fields import check_writable_dir
from .spec import OptionError, RunSpec, spec_error_names

__all__ = [
    "LOCK_FILE",
    "PRETRAIN_FILE",
    "RUN_FILE",
    "RUN_OUTPUTS",
    "check_free_space",
    "check_output_folder",
    "check_run_folder",
    "device_of",
    "fits_widths_to_budget",
    "locked_run_folder",
    "open_run",
    "preflight",
    "remove_outputs",
]

RUN_FILE = "run.json"
# Held by the process writing a run folder; never removed (a lock file deleted while held
# would let a second process lock a new file of the same name).
LOCK_FILE = ".lock"
PRETRAIN_FILE = "pretrain.pt"
# What a run writes into its folder; --overwrite removes exactly these, nothing else.
RUN_OUTPUTS = (
    RUN_FILE,
    PRETRAIN_FILE,
    "supernet.pt",
    "archive.json",
    "pareto.csv",
    "pareto.png",
    "history.csv",
    "report.md",
    "resume",
    "front",
    "heuristic",
    "ray-train",
    "compare.json",
    "compare.md",
    "compare.png",
    "multi-exit",
)


def open_run(out: str | Path) -> RunSpec:
    """The RunSpec saved in run folder ``out``, its ``out`` set to where the folder is now."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise OptionError("out", f"{out} holds no {RUN_FILE}: not a run folder of this version")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise OptionError("out", f"{path} is not readable JSON ({err})") from None
    return RunSpec.from_options(RunSpec.from_dict(doc, str(path)), out=str(Path(out)))


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that holds a run unless resuming or overwriting it, one that holds
    other files, or one that cannot be written."""
    check_writable_dir(out, "out")
    if not out.exists():
        if resume:
            raise OptionError("out", f"{out} does not exist: nothing to resume")
        return
    entries = {p.name for p in out.iterdir()} - {LOCK_FILE}
    if resume:
        if RUN_FILE not in entries:
            raise OptionError("out", f"{out} holds no {RUN_FILE}: nothing to resume")
        if _finished(out / RUN_FILE):
            # Resuming would redo the hand-back and rewrite the report over a complete run.
            damage = _damaged_output(out)
            raise OptionError(
                "out",
                f"{out} holds a finished run{damage}: nothing to resume; pass --overwrite "
                "instead of --resume to run it again, or choose another --out",
            )
        return
    if not entries:
        return
    if not entries <= set(RUN_OUTPUTS):
        raise OptionError(
            "out",
            f"{out} holds files that are not a run's ({sorted(entries - set(RUN_OUTPUTS))[:3]}"
            "...): choose an empty or new folder",
        )
    if not overwrite:
        raise OptionError(
            "out",
            f"{out} already holds a run: pass --resume to continue it, --overwrite to replace "
            "it, or choose another --out",
        )


def _damaged_output(out: Path) -> str:
    """ ", whose FILE is damaged (why)" for the first of a finished run's archive and supernet
    that does not read whole (a truncated copy, a full disk), else "". Read without torch: the
    archive is JSON, a checkpoint a zip file whose members carry checksums."""
    try:
        json.loads((out / "archive.json").read_text())
    except (OSError, ValueError) as err:
        return f", whose archive.json is damaged ({err})"
    try:
        with zipfile.ZipFile(out / "supernet.pt") as checkpoint:
            bad = checkpoint.testzip()
        if bad is not None:
            return f", whose supernet.pt is damaged (member {bad} fails its checksum)"
    except (OSError, zipfile.BadZipFile) as err:
        return f", whose supernet.pt is damaged ({err})"
    return ""


@contextmanager
def locked_run_folder(out: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold run folder ``out`` for this process, then check it (:func:`check_run_folder`):
    a second search or resume on it, started while this one runs, is refused at once instead
    of writing beside it, and so is one whose folder changed since its preflight. The lock is
    the operating system's (released when the process ends, even by kill -9). A folder to be
    created is created here."""
    created = not out.is_dir()
    if created:
        if resume or out.exists():  # nothing to resume, or a file in the way: say which
            spec_error_names(lambda: check_run_folder(out, resume, overwrite))
        check_writable_dir(out, "out")
        out.mkdir(parents=True, exist_ok=True)  # a second search may make it first
    lock = FileLock(out / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OptionError(
            "--out",
            f"another nat search is writing to {out} (it holds {out / LOCK_FILE}): wait for "
            "it to end, or choose another --out",
        ) from None
    try:
        spec_error_names(lambda: check_run_folder(out, resume, overwrite))
        yield
    except BaseException:
        # A run refused before it wrote anything leaves no folder behind it.
        if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            lock.release()
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _finished(run_file: Path) -> bool:
    """Whether the run's last write happened: run.json gains its ``timing`` only then."""
    try:
        return "timing" in json.loads(run_file.read_text())
    except (ValueError, OSError):
        return False  # unreadable: open_run says so


def check_output_folder(out: Path, option: str, marker: str) -> None:
    """Refuse an output folder ``out`` that is a file, cannot be written, or holds files that
    are not an earlier output of the same command (which writes ``marker`` there): aimed into
    a run's folders, a command would otherwise replace what that run describes (a front
    subnet's config.json and weights.pt, its run.json)."""
    check_writable_dir(out, option)
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if names and marker not in names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise OptionError(
            option,
            f"{out} already holds files ({shown}) that this command did not write: choose a "
            "new or empty folder",
        )


def check_free_space(out: Path, supernet) -> None:
    """Refuse to start a run whose supernet checkpoints cannot fit on ``out``'s disk: found
    at the first save, the full disk would cost the pre-training done before it."""
    weights = sum(t.numel() * t.element_size() for t in supernet.state_dict().values())
    # pretrain.pt (weights and SGD momentum), supernet.pt, a search snapshot, and the
    # temporary copy each is written through; the front's exports are far smaller.
    needed = 5 * weights
    free = shutil.disk_usage(out if out.exists() else out.parent).free
    if free < needed:
        raise OptionError(
            "--out",
            f"the disk of {out} has {free / 2**20:,.0f} MB free and this run writes about "
            f"{needed / 2**20:,.0f} MB of checkpoints: free some space or choose another --out",
        )


def fits_widths_to_budget(spec: RunSpec) -> bool:
    """Whether the run's width choices are derived from its budget: a budget is given and
    ``--width-mults`` is not (explicit choices always win)."""
    budget = any(v is not None for v in spec.search.cost_limits.values())
    return budget and "width_mults" not in spec.space_options


def device_of(spec: RunSpec):
    """The torch device the spec asks for: CUDA when present for "auto"; an error naming
    --device when CUDA is asked for and absent."""
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device", "cuda asked for, but torch sees no CUDA device")
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec.device)


def preflight(spec: RunSpec, resume: bool = False, overwrite: bool = False) -> RunSpec:
    """Every check that needs neither torch nor the data: the spec's options and paths, the
    Ray address, the run folder, CUDA when asked for, and whether the budgets can fit the
    space's smallest subnet at all. Returns the spec with absolute paths."""
    spec = spec.validate()
    if spec.out is not None:
        spec_error_names(lambda: check_run_folder(Path(spec.out), resume, overwrite))
    elif resume:
        raise OptionError("--out", "resuming needs the run folder")
    if spec.device == "cuda":  # torch only loads for this one check
        device_of(spec)
    space = spec.build_space()
    if fits_widths_to_budget(spec):  # the narrowest width the budget can be fitted with
        from .engine.heuristic import WIDTH_GRID

        space = search_spaces.get(space.name, **{**space.options, "width_mults": [WIDTH_GRID[0]]})
    # The classifier's size depends on the class count, known once the data is loaded;
    # at two classes (the fewest) a budget below the smallest subnet can never fit.
    smallest = space.costs(space.smallest(), 2)
    units = {"params": "params", "macs": "MACs", "peak_memory": "bytes", "model_size": "bytes"}
    for metric, limit in spec.search.cost_limits.items():
        count = int(smallest.metric(metric, spec.search.precision)[0])
        if limit is not None and limit < count:
            raise OptionError(
                "--max-" + metric.replace("_", "-"),
                f"budget of {limit:,.0f} {units[metric]} is below the smallest {space.name} "
                f"subnet (at least {count:,} {units[metric]}): raise it or use a smaller space",
            )
    return spec


def remove_outputs(out: Path) -> None:
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():  # a link goes, never what it points to
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
