"""Supernet checkpoints: written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

import search_spaces
from search_spaces import Arch
from supernets import StaticNet, Supernet, build_supernet

from .files import atomic_write, write_json

__all__ = ["export_subnet", "load_supernet", "load_training_state", "save_supernet"]

FORMAT = "nat-supernet/1"


def save_supernet(
    path: str | os.PathLike,
    supernet: Supernet,
    training_state: dict | None = None,
    **metadata: Any,
) -> Path:
    """Save weights, space and class count, plus JSON-able ``metadata`` (data source, epochs,
    accuracies...), atomically. ``training_state`` (optimiser, schedule, generators) lets
    training resume from this file; see :func:`load_training_state`."""
    payload = {
        "format": FORMAT,
        "space": supernet.space.name,
        "space_options": json.dumps(supernet.space.options),
        "num_classes": supernet.num_classes,
        "metadata": json.dumps(metadata),
        "state_dict": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},
    }
    if training_state is not None:
        payload["training_state"] = training_state
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_supernet(
    path: str | os.PathLike,
    num_classes: int | None = None,
    space: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[Supernet, dict]:
    """Load a supernet saved by :func:`save_supernet`; returns it with its metadata.

    ``space``: the space name the caller expects (a mismatch is an error). ``num_classes``:
    when it differs from the checkpoint's, the classifier is rebuilt for the new task and
    every other weight is kept (transfer to another dataset).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train one with `nat train-supernet`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}): "
            "retrain it or point to another file"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a supernet checkpoint of this engine (format {FORMAT})")
    if space is not None and payload["space"] != space:
        raise ValueError(
            f"checkpoint {path} holds a supernet of space {payload['space']!r}, not {space!r}: "
            f"pass --space {payload['space']} or another checkpoint"
        )
    net_space = search_spaces.get(payload["space"], **json.loads(payload["space_options"]))
    supernet = build_supernet(net_space, int(payload["num_classes"]))
    try:
        supernet.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match its space's supernet: {err}") from err
    if num_classes is not None and num_classes != supernet.num_classes:
        supernet.reset_classifier(num_classes)
    return supernet.to(map_location), json.loads(payload["metadata"])


def load_training_state(path: str | os.PathLike, train_config: dict) -> dict | None:
    """What :func:`~nat.training.train.train_supernet` needs to continue the training saved
    in ``path``: None when there is no such file, or it was made with another recipe."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        metadata = json.loads(payload["metadata"])
        state = payload["training_state"]
    except Exception:  # a damaged or foreign file: train from the start, overwriting it
        return None
    if metadata.get("train_config") != json.loads(json.dumps(train_config)):
        return None
    return {**state, "supernet": payload["state_dict"], "history": metadata["history"]}


def export_subnet(model: StaticNet, arch: Arch, folder: str | os.PathLike, info: dict) -> Path:
    """Write ``config.json`` (the architecture and ``info``), ``weights.pt`` (state_dict) and
    ``model.ts`` (TorchScript, traced at the architecture's resolution) into ``folder``."""
    folder = Path(folder)
    model = model.cpu().eval()
    write_json(folder / "config.json", {"arch": arch.to_dict(), **info})
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    atomic_write(folder / "weights.pt", lambda f: f.write(state.getbuffer()))
    example = torch.zeros(1, 3, arch.resolution, arch.resolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        traced = torch.jit.trace(model, example)
        script = io.BytesIO()
        torch.jit.save(traced, script)
    atomic_write(folder / "model.ts", lambda f: f.write(script.getbuffer()))
    return folder
