"""Supernet checkpoints: written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

import search_spaces
from search_spaces import Arch
from supernets import StaticNet, Supernet, build_static, build_supernet

from ..data.sources import resize_batch
from .deploy import export_onnx
from .files import atomic_write, write_json

__all__ = [
    "export_subnet",
    "fit_shapes",
    "load_subnet",
    "load_supernet",
    "load_training_state",
    "load_weights",
    "read_supernet_header",
    "save_supernet",
]

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


def _supernet_payload(
    path: str | os.PathLike, map_location: str | torch.device, mmap: bool = False
) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train one with `nat train-supernet`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}): "
            "retrain it or point to another file"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a supernet checkpoint of this engine (format {FORMAT})")
    return payload


def read_supernet_header(path: str | os.PathLike) -> dict:
    """What a later search checks a supernet checkpoint against, without building it: its
    ``space`` name and ``space_options``, ``num_classes`` and ``metadata`` (data, classes,
    recipe, epochs, budgets covered; see ``nat train-supernet``)."""
    # The weights memory-mapped, never read: a header costs a millisecond whatever the
    # supernet's size, and a truncated file is still refused (its zip directory is at the end).
    payload = _supernet_payload(path, "cpu", mmap=True)
    return {
        "format": payload["format"],
        "space": payload["space"],
        "space_options": json.loads(payload["space_options"]),
        "num_classes": int(payload["num_classes"]),
        "metadata": json.loads(payload["metadata"]),
    }


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
    payload = _supernet_payload(path, map_location)
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


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """What torch file ``path`` holds, through the safe loader (tensors and plain data,
    never code). A damaged file, or one that would need code to load (a pickle payload), is
    a ValueError naming it: torch's own error would suggest ``weights_only=False``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise ValueError(
            f"{path} is not a readable weights file ({type(err).__name__}): it is damaged, or "
            "holds code, which is never run; export or save it again"
        ) from None


def load_training_state(path: str | os.PathLike, train_config: dict | None) -> dict | None:
    """What :func:`~nat.training.train.train_supernet` needs to continue the training saved
    in ``path``: None when there is no such file. A file that cannot continue this training
    (damaged, refused by the safe loader, finished, or made with a recipe other than
    ``train_config``; None: any recipe) is a ValueError: starting over would silently replace
    it."""
    path = Path(path)
    if not path.is_file():
        return None

    def refuse(reason: str) -> ValueError:
        return ValueError(
            f"{path} cannot be resumed: {reason}; remove it to train from the start, or "
            "write elsewhere"
        )

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        metadata = json.loads(payload["metadata"])
    except Exception as err:  # truncated, foreign or a pickle payload: never run
        raise refuse(f"it is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload.get("training_state"), dict):
        raise refuse("it holds no training state (its training finished, or it is a run's)")
    saved = metadata.get("train_config") or {}
    wanted = saved if train_config is None else json.loads(json.dumps(train_config))
    if saved != wanted:
        changed = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
        raise refuse(f"it was trained with other settings ({', '.join(changed)})")
    state = payload["training_state"]
    return {**state, "supernet": payload["state_dict"], "history": metadata["history"]}


def export_subnet(
    model: StaticNet,
    arch: Arch,
    folder: str | os.PathLike,
    info: dict,
    images: torch.Tensor | None = None,
) -> Path:
    """Write ``config.json`` (the architecture and ``info``), ``weights.pt`` (state_dict) and,
    given ``images`` (a batch of real images, resized here to the architecture's resolution),
    ``model.onnx`` checked against torch on them (see :mod:`nat.io.deploy`) into ``folder``.

    TorchScript is no longer written: torch 2.14 deprecates it, ``model.onnx`` runs without
    torch, and :func:`load_subnet` rebuilds the torch model from the other two files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    # An earlier export's int8 file would describe another network; nat.quantize writes anew.
    (folder / "model.int8.onnx").unlink(missing_ok=True)
    if images is not None:
        batch = resize_batch(images.float().cpu(), arch.resolution)
        info = {**info, "onnx_max_abs_diff": export_onnx(model, batch, folder / "model.onnx")}
    else:  # an earlier export's model.onnx would describe another network
        (folder / "model.onnx").unlink(missing_ok=True)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    atomic_write(folder / "weights.pt", lambda f: f.write(state.getbuffer()))
    write_json(folder / "config.json", {"arch": arch.to_dict(), **info})
    return folder


def load_subnet(folder: str | os.PathLike) -> tuple[StaticNet, dict]:
    """The torch model an :func:`export_subnet` folder holds (eval mode, CPU), and its
    ``config.json``."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        arch = Arch.from_dict(config["arch"])
        num_classes = int(config["num_classes"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder} is not an exported subnet's folder ({err})") from None
    model = build_static(arch, num_classes)
    state = load_weights(folder / "weights.pt")
    try:
        if config.get("pruned"):
            fit_shapes(model, state)
        model.load_state_dict(state)
    except (OSError, RuntimeError, TypeError, AttributeError) as err:  # not a state_dict
        raise ValueError(f"{folder / 'weights.pt'} does not fit its config.json: {err}") from None
    return model.eval(), config


def fit_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Resize ``model``'s convolutions, BatchNorms and linear layers (in place) to the
    shapes of ``state``'s weights: a channel-pruned model (``nat prune``) is its architecture
    with fewer channels per layer, and its ``weights.pt`` is a plain state_dict, so it loads
    with ``weights_only=True``. Depthwise convolutions stay depthwise."""
    from torch import nn

    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight")
        if weight is None or not hasattr(module, "weight") or weight.shape == module.weight.shape:
            continue
        if isinstance(module, nn.Conv2d):
            out_channels, in_per_group = weight.shape[:2]
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.groups = out_channels if depthwise else module.groups
            module.in_channels, module.out_channels = in_per_group * module.groups, out_channels
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
            module.running_mean = torch.zeros(weight.shape[0])
            module.running_var = torch.ones(weight.shape[0])
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        else:
            continue  # load_state_dict names the mismatch
        module.weight = nn.Parameter(torch.empty_like(weight))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.empty(weight.shape[0]))
    return model
