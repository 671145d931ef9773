"""7. Quality: are the models ``nat search`` hands back worth deploying? Judged on a test split
that no step of the search or of model choice touches, against what a user would do instead:
torchvision's MobileNetV2 and ShuffleNetV2 scaled by the Feillet rule and trained from scratch
(the recipe of ``shared/REFERENCE.md``: SGD Nesterov, weight decay 5e-4, OneCycle to lr 0.1,
batch 128, flip and 4-px crop)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import search_spaces
import supernets
from nat.data import DataSplits, make_loader, resize_batch
from nat.engine.heuristic import feillet
from nat.engine.surrogate import rank_metrics
from nat.io.checkpoint import load_supernet
from nat.profile import profile
from nat.run import load_data
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate

from .common import Bench, Result, Table

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
    """Train ``model`` from scratch with the peer's recipe for ``epochs``; returns seconds."""
    torch.manual_seed(seed)
    loader = make_loader(data.train, 128, shuffle=True, seed=seed, drop_last=True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=epochs * len(loader)
    )
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(resize_batch(images, resolution)), labels).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return time.perf_counter() - start


def _scratch_row(method, model, data, resolution, epochs, test, val=None) -> dict:
    seconds = train_recipe(model, data, resolution, epochs)
    params, macs = profile(model, resolution)
    row = {"method": method, "params": params, "macs": macs, "epochs": epochs}
    row |= {"seconds": seconds, "test": evaluate(model, test, resolution)}
    if val is not None:
        row["val"] = evaluate(model, val, resolution)
    return row


def _searched(folder: Path) -> dict:
    """The run's best handed-back subnet (the front's, or the heuristic's when it is off the
    front), by (fine-tuned) validation accuracy; its folder as ``"folder"``."""
    paths = [*sorted(folder.glob("front/*/config.json")), *folder.glob("heuristic/config.json")]
    configs = [json.loads(p.read_text()) | {"folder": p.parent.name} for p in paths]
    return max(configs, key=lambda c: c["val_accuracy"])


def bench_quality(bench: Bench) -> Result:
    s = bench.s
    base = RunSpec.from_options(
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
    data = load_data(base)
    val = SubnetEvaluator.batches(data.val)
    test = SubnetEvaluator.batches(data.test)
    print(f"quality data: {len(data.train)} / {len(data.val)} / {len(data.test)}", flush=True)
    rows, fidelity, n = [], {}, data.num_classes
    res, epochs = s.quality_resolution, s.quality_epochs
    for budget in s.quality_budgets:
        label = f"{budget / 1e3:,.0f}k"
        folder, wall = bench.cached_run(
            f"quality-{label}", RunSpec.from_options(base, max_params=budget)
        )
        best = _searched(folder)
        rows.append(
            {
                "budget": label,
                "method": f"(a) nat search, fine-tuned ({best['folder']})",
                "params": best["params"],
                "macs": best["macs"],
                "seconds": wall,
                "test": best["test_accuracy"],
                "val": best["val_accuracy"],
                "inherited_test": best["inherited_test_accuracy"],
            }
        )
        for peer in ("mobilenet_v2", "shufflenet_v2"):
            model, width = feillet_peer(peer, budget, n)
            row = _scratch_row(f"(b) {peer} w{width}, {epochs} ep", model, data, res, epochs, test)
            rows.append({"budget": label, **row})
            per_epoch = row["seconds"] / epochs
            same_time = min(s.quality_max_epochs, max(1, round(wall / per_epoch)))
            model, _ = feillet_peer(peer, budget, n)
            row = _scratch_row(
                f"(c) {peer} w{width}, {same_time} ep", model, data, res, same_time, test
            )
            rows.append({"budget": label, **row})
        space = search_spaces.from_dict(best["space"])
        for method, arch in (
            ("(d) engine Feillet arch", feillet(budget, None, n, space=space).arch),
            ("(d) searched arch", search_spaces.Arch.from_dict(best["arch"])),
        ):
            torch.manual_seed(0)
            model = supernets.build_static(arch, n)
            row = _scratch_row(
                f"{method}, {epochs} ep", model, data, arch.resolution, epochs, test, val
            )
            rows.append({"budget": label, **row})
        if budget == s.quality_budgets[0]:
            fidelity = _fidelity(bench, folder, space, data, val, budget)
            ablations = _ablations(
                bench, RunSpec.from_options(base, max_params=budget), data, fidelity
            )
    table = Table(
        f"Test accuracy on {len(data.test):,} held-out images of {Path(base.data.source).name} "
        f"({len(data.train):,} "
        f"training images at {res} px; nothing in the search or model choice saw them)",
        ["budget", "method", "params", "MACs", "wall s", "test %"],
        [
            [
                r["budget"],
                r["method"],
                f"{r['params']:,}",
                f"{r['macs']:,}",
                f"{r['seconds']:.0f}",
                f"{100 * r['test']:.1f}",
            ]
            for r in rows
        ],
    )
    note = (
        f"Fidelity over {len(fidelity['inherited'])} subnets of the "
        f"{s.quality_budgets[0] / 1e3:,.0f}k run's supernet: Kendall tau (inherited, "
        f"{epochs}-epoch scratch validation accuracy) = {fidelity['kendall_tau']:.3f}, "
        f"Spearman rho = {fidelity['spearman_rho']:.3f}"
    )
    ablation_table = Table(
        f"Supernet recipe ablations at {s.quality_budgets[0] / 1e3:,.0f}k (pre-training only, "
        f"no search): inherited validation accuracy of the fidelity subnets, and Kendall tau "
        f"against their from-scratch accuracy",
        ["recipe", "pre-training s", "median %", "best %", "largest %", "tau"],
        [
            [
                a["recipe"],
                f"{a['seconds']:.0f}",
                f"{100 * a['median']:.1f}",
                f"{100 * a['best']:.1f}",
                f"{100 * a['largest']:.1f}",
                f"{a['kendall_tau']:.3f}",
            ]
            for a in ablations
        ],
    )
    return Result(
        data={"rows": rows, "fidelity": fidelity, "ablations": ablations},
        sections=[table, note, ablation_table],
    )


def _ablations(bench: Bench, spec: RunSpec, data, fidelity: dict) -> list[dict]:
    """Each recipe of ``quality_ablations`` (and the defaults) pre-trains a supernet; its
    inherited accuracy on the fidelity subnets, and their ranking against scratch."""
    from nat.run import prepare_supernet

    archs = [search_spaces.Arch.from_dict(a) for a in fidelity["archs"]]
    out = []
    for recipe, options in {"defaults": {}, **bench.s.quality_ablations}.items():
        start = time.perf_counter()
        # The run's own widths (fitted to the budget), so the fidelity subnets are in the space.
        widths = fidelity["space"]["options"]["width_mults"]
        variant = RunSpec.from_options(spec, width_mults=widths, **options)
        supernet = prepare_supernet(variant, data, progress=False).eval()
        seconds = time.perf_counter() - start
        inherited = np.asarray(SubnetEvaluator(data, 20)(supernet, archs))
        metrics = rank_metrics(np.array(fidelity["scratch"]), inherited)
        out.append(
            {
                "recipe": recipe,
                "options": options,
                "seconds": seconds,
                "inherited": inherited.tolist(),
                "median": float(np.median(inherited)),
                "best": float(inherited.max()),
                "largest": float(inherited[-1]),
                **metrics,
            }
        )
        print(f"ablation {recipe}: {out[-1]}", flush=True)
    return out


def _fidelity(bench: Bench, folder: Path, space, data, val, budget: float) -> dict:
    """Inherited vs from-scratch validation accuracy of subnets spread over the params range
    within ``budget``, inherited from the run's final supernet."""
    from nat.engine.archive import Archive
    from nat.engine.loop import _sample_feasible
    from nat.engine.problem import Budgets

    s, n = bench.s, data.num_classes
    supernet, _ = load_supernet(folder / "supernet.pt")
    budgets = Budgets(space, n, budget)
    X = _sample_feasible(budgets, 2000, np.random.default_rng(99), Archive(space, n))
    order = np.argsort(space.complexity(X, n)[0], kind="stable")
    picks = order[
        np.unique(np.linspace(0, len(order) - 1, s.quality_fidelity_archs).round()).astype(int)
    ]
    archs = [space.decode(x) for x in X[picks]]
    inherited = SubnetEvaluator(data, 20)(supernet.eval(), archs)
    scratch = []
    for arch in archs:
        torch.manual_seed(0)
        model = supernets.build_static(arch, n)
        train_recipe(model, data, arch.resolution, s.quality_epochs)
        scratch.append(evaluate(model, val, arch.resolution))
    metrics = rank_metrics(np.array(scratch), np.asarray(inherited))
    return {
        "space": space.to_dict(),
        "archs": [a.to_dict() for a in archs],
        "params": [int(p) for p in space.complexity(X[picks], n)[0]],
        "inherited": [float(a) for a in inherited],
        "scratch": scratch,
        **metrics,
    }
