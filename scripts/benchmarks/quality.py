"""7. Quality at equal wall time: is what ``nat search --time-limit`` hands back better than a
stock network trained for as long? Judged on a test split that no step of the search or of
model choice touches, against what a user would do instead: torchvision's MobileNetV2 (and
ShuffleNetV2) scaled by the Feillet rule and trained from scratch for the same wall time,
(c) with the stock recipe of ``shared/REFERENCE.md`` (SGD Nesterov, weight decay 5e-4,
OneCycle to lr 0.1, batch 128, flip and 4-px crop) and (c') with the engine's own final
recipe, so that a gain from the recipe alone is not credited to the search; (d) each
handed-back architecture from scratch for as many epochs, and (e) the Feillet heuristic's
architecture from scratch for the whole time: what the supernet and the search add."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
import supernets
from nat.data import DataSplits, make_loader
from nat.folder import open_run
from nat.prepare import load_data
from nat.profile import profile
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate, input_batch
from nat.training.trainer import Trainer

from .common import Bench, Plot, Result, Table

# The Feillet rule on torchvision's classes, one block per stage, second stage at stride 1
# for 32-px inputs (REFERENCE.md); widths on a 0.05 grid.
_MBV2_STAGES = [[1, 16], [6, 24], [6, 32], [6, 64], [6, 96], [6, 160], [6, 320]]
_MBV2_STRIDES = [1, 1, 2, 2, 1, 2, 1]
_SHUFFLE_CHANNELS = (116, 232, 464)
_WIDTHS = np.round(np.arange(0.05, 4.0001, 0.05), 2)


def torchvision_peer(name: str, width: float, num_classes: int) -> nn.Module:
    """torchvision's ``mobilenet_v2`` or ``shufflenet_v2`` at ``width``, one block per stage."""
    import torchvision

    if name == "mobilenet_v2":
        setting = [[t, c, 1, s] for (t, c), s in zip(_MBV2_STAGES, _MBV2_STRIDES, strict=True)]
        return torchvision.models.MobileNetV2(
            num_classes, width_mult=width, inverted_residual_setting=setting
        )
    channels = [max(8, round(c * width / 8) * 8) for c in _SHUFFLE_CHANNELS]
    return torchvision.models.ShuffleNetV2([1, 1, 1], [24, *channels, 1024], num_classes)


def feillet_peer(name: str, budget: float, num_classes: int) -> tuple[nn.Module, float]:
    """The widest ``torchvision_peer`` within ``budget`` parameters, and its width."""
    best = None
    for width in _WIDTHS:
        model = torchvision_peer(name, float(width), num_classes)
        if sum(p.numel() for p in model.parameters()) > budget:
            break
        best = (model, float(width))
    if best is None:
        raise ValueError(f"no {name} fits {budget:,.0f} params")
    return best


def train_recipe(
    model: nn.Module, data: DataSplits, resolution: int, epochs: int, seed: int = 0
) -> float:
    """Train ``model`` from scratch with the stock recipe for ``epochs``; returns seconds.
    Channels-last like the engine's trainer, so that (c) and (c') differ in recipe only."""
    torch.manual_seed(seed)
    loader = make_loader(data.train, 128, shuffle=True, seed=seed, drop_last=True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=epochs * len(loader)
    )
    start = time.perf_counter()
    model.to(memory_format=torch.channels_last).train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(input_batch(images, resolution)), labels).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return time.perf_counter() - start


def row_of(method: str, model: nn.Module, resolution: int, seconds: float, epochs: float, batches):
    params, macs = profile(model, resolution)
    val, test = (evaluate(model, b, resolution) for b in batches)
    return {
        "method": method,
        "params": params,
        "macs": macs,
        "seconds": seconds,
        "epochs": epochs,
        "val": val,
        "test": test,
    }


def handed_configs(folder: Path) -> list[dict]:
    """The run's handed-back models (front/NN/config.json), smallest target first."""
    return [
        json.loads(p.read_text()) | {"folder": f"front/{p.parent.name}"}
        for p in sorted(folder.glob("front/*/config.json"))
    ]


def search_run(bench: Bench, base: RunSpec, budget: float, seed: int, seconds: float):
    """(folder, wall seconds) of ``nat search --time-limit`` at ``budget``, cached."""
    spec = RunSpec.from_options(base, max_params=budget, time_limit=seconds, seed=seed)
    space = "" if base.space == "mbv2" else f"{base.space}-"  # mbv2's runs keep their names
    return bench.cached_run(f"quality-{space}{budget / 1e3:.0f}k-{seconds:.0f}s-seed{seed}", spec)


def _stock(peer: str, budget: float, span: float, per_epoch: float, data, s, batches) -> dict:
    """(c): the peer with the stock recipe, its epochs sized to ``span`` seconds."""
    epochs = min(s.quality_max_epochs, max(1, round(span / per_epoch)))
    model, width = feillet_peer(peer, budget, data.num_classes)
    seconds = train_recipe(model, data, s.quality_resolution, epochs)
    method = f"(c) {peer} w{width}, stock recipe, {span / 60:.0f} min ({epochs} ep)"
    return row_of(method, model, s.quality_resolution, seconds, epochs, batches)


def _engine_row(
    method: str, model: nn.Module, resolution: int, base: RunSpec, data, batches, **length
) -> dict:
    """Train ``model`` with the engine's final recipe for ``length`` (epochs= or seconds=),
    seeded as every row is, and score it."""
    run = Trainer(
        model, data, resolution, base.finetune, batch_size=base.batch_size, seed=0, **length
    )
    run.train()
    return row_of(method, run.finish(), resolution, run.seconds, run.epochs, batches)


def _ours(peer: str, budget: float, span: float, base: RunSpec, data, s, batches) -> dict:
    """(c'): the peer with the engine's final recipe for ``span`` seconds of training."""
    torch.manual_seed(0)
    model, width = feillet_peer(peer, budget, data.num_classes)
    method = f"(c') {peer} w{width}, the engine's recipe, {span / 60:.0f} min"
    seconds = min(span, s.peer_seconds or span)
    return _engine_row(method, model, s.quality_resolution, base, data, batches, seconds=seconds)


def _scratch(config: dict, base: RunSpec, data, batches) -> dict:
    """(d): a handed-back model's architecture from scratch, same recipe, same epochs."""
    arch = search_spaces.Arch.from_dict(config["arch"])
    epochs = max(config["train_epochs"], 1.0)
    torch.manual_seed(0)
    model = supernets.build_static(arch, data.num_classes)
    method = f"(d) {config['folder']}'s architecture from scratch, {epochs:.1f} ep"
    return _engine_row(method, model, arch.resolution, base, data, batches, epochs=epochs)


def _heuristic_arch(folder: Path) -> search_spaces.Arch:
    """The Feillet heuristic's subnet at the budget, from run ``folder``'s archive."""
    space = open_run(folder).build_space()
    entries = json.loads((folder / "archive.json").read_text())["entries"]
    heuristic = max((e for e in entries if e["source"] == "heuristic"), key=lambda e: e["params"])
    return space.decode(np.asarray(heuristic["x"]))


def _strategy(folder: Path) -> str:
    """The plan run ``folder`` followed: "search" or "heuristic" (archive.json)."""
    return json.loads((folder / "archive.json").read_text()).get("strategy", "search")


def _heuristic_alone(arch: search_spaces.Arch, seconds: float, base: RunSpec, data, batches):
    """(e): ``arch`` trained from scratch with the engine's recipe for ``seconds``: what a
    user gets with neither a supernet nor a search."""
    torch.manual_seed(0)
    model = supernets.build_static(arch, data.num_classes)
    method = f"(e) the heuristic's architecture from scratch, {_duration(seconds)}"
    return _engine_row(method, model, arch.resolution, base, data, batches, seconds=seconds)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def _searched_rows(
    label: str, space: str, handed: list[dict], seed: int, wall: float, limit: float
):
    best = max(handed, key=lambda c: c["val_accuracy"])
    budget = max(c["target"] for c in handed)
    for c in handed:
        share = f"1/{budget / c['target']:.0f}" if c["target"] < budget else "budget"
        yield {
            "budget": label,
            "method": f"(a) nat search --space {space} --time-limit {_duration(limit)}, "
            f"seed {seed}: "
            f"{c['folder']} ({share}, {c['source']})" + (" *" if c is best else ""),
            "params": c["params"],
            "macs": c["macs"],
            "seconds": wall,
            "epochs": c["train_epochs"],
            "val": c["val_accuracy"],
            "test": c["test_accuracy"],
            "inherited_test": c["inherited_test_accuracy"],
        }


def quality_base(bench: Bench) -> RunSpec:
    """The quality split's run settings: half of ``quality_subset`` images to train, a quarter
    each to validate and test, split_seed 0, at one resolution."""
    s = bench.s
    return RunSpec.from_options(
        space=s.quality_space,
        data=bench.pretrain_spec.data.source,
        subset=s.quality_subset,
        val_fraction=s.quality_holdout,
        test_fraction=s.quality_holdout,
        resolutions=[s.quality_resolution],
        seed=0,
        split_seed=0,
        **s.quality_options,
    )


def bench_quality(bench: Bench) -> Result:
    s = bench.s
    unknown = set(s.quality_peer_kinds) - {"(c)", "(c')"}
    if unknown:
        raise ValueError(f"quality_peer_kinds: {sorted(unknown)} are none of (c), (c')")
    base = quality_base(bench)
    data = load_data(base)
    batches = (SubnetEvaluator.batches(data.val), SubnetEvaluator.batches(data.test))
    print(f"quality data: {len(data.train)} / {len(data.val)} / {len(data.test)}", flush=True)
    rows, curves = [], {}
    for b, (budget, limit) in enumerate(zip(s.quality_budgets, s.quality_limits, strict=True)):
        label = f"{budget / 1e3:,.0f}k"
        curve = curves.setdefault(label, {"(a)": [], "(c)": [], "(c')": [], "(e)": []})
        first = first_folder = None
        for seed in s.quality_seeds if b == 0 else s.quality_seeds[:1]:
            folder, wall = search_run(bench, base, budget, seed, limit)
            handed = handed_configs(folder)
            first, first_folder = first or handed, first_folder or folder
            rows += _searched_rows(label, s.quality_space, handed, seed, wall, limit)
            best = max(handed, key=lambda c: c["val_accuracy"])
            curve["(a)"].append((wall / 60, best["test_accuracy"]))
        for fraction in s.quality_curve_fractions if b == 0 else ():
            folder, wall = search_run(bench, base, budget, 0, fraction * limit)
            best = max(handed_configs(folder), key=lambda c: c["val_accuracy"])
            curve["(a)"].append((wall / 60, best["test_accuracy"]))
        for peer in s.quality_peers:
            model, width = feillet_peer(peer, budget, data.num_classes)
            seconds = train_recipe(model, data, s.quality_resolution, s.quality_epochs)
            method = f"(b) {peer} w{width}, stock recipe, {s.quality_epochs} ep"
            row = row_of(method, model, s.quality_resolution, seconds, s.quality_epochs, batches)
            rows.append({"budget": label, **row})
            per_epoch = seconds / s.quality_epochs
            curved = b == 0 and peer == s.quality_peers[0]
            for span in [f * limit for f in (*s.quality_curve_fractions, 1.0) if curved or f == 1]:
                key = {"peer": peer, "budget": budget, "span": span, "data": base.data.source}
                for kind, train in (
                    ("(c)", partial(_stock, peer, budget, span, per_epoch, data, s, batches)),
                    ("(c')", partial(_ours, peer, budget, span, base, data, s, batches)),
                ):
                    if kind not in s.quality_peer_kinds:
                        continue
                    name = f"quality-{kind[1:-1]}-{peer}-{label}-{span:.0f}s"
                    row = bench.cached(
                        name, {**key, "kind": kind, "recipe": str(base.finetune)}, train
                    )
                    rows.append({"budget": label, **row})
                    if peer == s.quality_peers[0]:
                        curve[kind].append((row["seconds"] / 60, row["test"]))
        if _strategy(first_folder) == "heuristic":
            # (a) trained the heuristic's subnets from scratch with the same recipe: (d) and
            # (e) would train the same architectures again for as long.
            print(f"{label}: (d) and (e) are (a)'s own models (strategy heuristic)", flush=True)
            continue
        arch = _heuristic_arch(first_folder)
        for fraction in (*(s.quality_curve_fractions if b == 0 else ()), 1.0):
            seconds = min(fraction * limit, s.peer_seconds or limit)
            row = bench.cached(
                f"quality-e-{s.quality_space}-{label}-{seconds:.0f}s",
                {"arch": arch.to_dict(), "seconds": seconds, "recipe": str(base.finetune)},
                partial(_heuristic_alone, arch, seconds, base, data, batches),
            )
            rows.append({"budget": label, **row})
            curve["(e)"].append((row["seconds"] / 60, row["test"]))
        for config in first:
            key = {
                "arch": config["arch"],
                "epochs": config["train_epochs"],
                "recipe": str(base.finetune),
            }
            row = bench.cached(
                f"quality-scratch-{label}-{config['folder']}",
                key,
                partial(_scratch, config, base, data, batches),
            )
            rows.append({"budget": label, **row, "handed_back_test": config["test_accuracy"]})
    table = Table(
        f"Test accuracy on {len(data.test):,} held-out images ({len(data.train):,} training "
        f"images at {s.quality_resolution} px; nothing in the search or model choice saw "
        "them). * the model validation picks",
        ["budget", "method", "params", "MACs", "wall s", "epochs", "val %", "test %"],
        [
            [
                r["budget"],
                r["method"],
                f"{r['params']:,}",
                f"{r['macs']:,}",
                f"{r['seconds']:.0f}",
                f"{r['epochs']:.1f}",
                f"{100 * r['val']:.1f}",
                f"{100 * r['test']:.1f}",
            ]
            for r in rows
        ],
    )
    plots = [
        Plot(f"quality_minutes_{label}.png", _draw(label, s.quality_space, curve), (6, 4))
        for label, curve in curves.items()
    ]
    return Result(data={"rows": rows, "curves": curves}, sections=[table], plots=plots)


def _draw(label: str, space: str, curve: dict):
    def draw(ax) -> None:
        styles = {
            "(a)": ("o", "tab:green"),
            "(c)": ("s-", "tab:gray"),
            "(c')": ("^-", "tab:blue"),
            "(e)": ("D", "tab:orange"),
        }
        names = {
            "(a)": f"(a) nat search --space {space} --time-limit",
            "(c)": "(c) MobileNetV2, stock recipe",
            "(c')": "(c') MobileNetV2, the engine's recipe",
            "(e)": "(e) the heuristic's architecture, from scratch",
        }
        for kind, points in curve.items():
            if points:
                x, y = zip(*sorted(points), strict=True)
                ax.plot(
                    x, [100 * v for v in y], styles[kind][0], c=styles[kind][1], label=names[kind]
                )
        ax.set_xlabel("wall time (min)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{label} parameters: accuracy against minutes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return draw
