"""A search's resume snapshot (``resume/`` in a run folder): written at every iteration
boundary, read back whole and checked before anything of the run is touched."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.checkpoint import load_supernet, save_supernet
from ..io.files import write_json
from .archive import Archive

__all__ = ["STATE_FORMAT", "Snapshot", "read_snapshot", "write_snapshot"]

STATE_FORMAT = "nat-search-state/1"


@dataclass
class Snapshot:
    """A search at its last completed iteration."""

    archive: Archive
    supernet: object  # the Supernet, its weights at that iteration
    history: list[dict]
    rng_state: dict  # numpy's bit generator state


def write_snapshot(
    folder: Path, iteration: int, supernet, rng_state: dict, archive: Archive, history: list
) -> None:
    """The supernet in its own file per iteration (written first), then state.json naming
    it, written atomically: a kill at any moment leaves the previous complete snapshot."""
    weights = f"supernet-{iteration:04d}.pt"
    save_supernet(folder / weights, supernet)
    state = {
        "format": STATE_FORMAT,
        "iteration": iteration,
        "supernet": weights,
        "rng": rng_state,
        "archive": archive.to_dict(),
        "history": history,
    }
    write_json(folder / "state.json", state)
    for old in folder.glob("supernet-*.pt"):
        if old.name != weights:
            old.unlink(missing_ok=True)


def read_snapshot(folder: Path) -> Snapshot:
    """The snapshot in ``folder``; a ValueError naming the file when any part of it is
    missing, damaged or of another version (FileNotFoundError without state.json)."""
    path = folder / "state.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the run was stopped before its initial archive was "
            "evaluated (or is not a `nat search` folder); start it again"
        )
    try:
        state = json.loads(path.read_text())
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        archive = Archive.from_dict(state["archive"])
        # Only a snapshot file of this folder: a path elsewhere is never opened.
        if not re.fullmatch(r"supernet-\d+\.pt", str(state["supernet"])):
            raise ValueError(f"supernet {state['supernet']!r} is not a snapshot's file name")
        history = state["history"]
        if not (
            isinstance(history, list)
            and history
            and all(isinstance(h, dict) and isinstance(h.get("iteration"), int) for h in history)
        ):
            raise ValueError("history is not a list of iteration records")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]  # checked by numpy
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"resume state {path} is corrupt or of another version: {err}") from err
    weights = folder / state["supernet"]
    try:
        supernet, _ = load_supernet(weights, space=archive.space.name)
    except (OSError, ValueError) as err:  # missing, damaged, a payload, another space
        raise ValueError(
            f"the search's snapshot cannot be read ({err}); the run cannot continue: pass "
            "--overwrite instead of --resume to start it again"
        ) from err
    if supernet.space != archive.space:
        raise ValueError(
            f"{weights} holds a supernet over another space than {path}'s archive: the run "
            "cannot continue; pass --overwrite instead of --resume to start it again"
        )
    return Snapshot(archive, supernet, history, rng.bit_generator.state)
