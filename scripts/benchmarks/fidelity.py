"""3. Ranking fidelity: do inherited-weight accuracies rank subnets as training them from
scratch does?"""

from __future__ import annotations

import time

import numpy as np
import torch

import supernets
from nat.engine.archive import Archive
from nat.engine.loop import sample_feasible
from nat.engine.surrogate import rank_metrics
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate, finetune

from .common import Bench, Result, Table


def bench_fidelity(bench: Bench) -> Result:
    s, space, data = bench.s, bench.space, bench.data
    X = sample_feasible(bench.budgets, 4000, np.random.default_rng(99), Archive(space, 10))
    params = space.complexity(X, data.num_classes)[0]
    order = np.argsort(params, kind="stable")
    picks = order[np.unique(np.round(np.linspace(0, len(order) - 1, s.fidelity_archs)).astype(int))]
    archs = [space.decode(x) for x in X[picks]]
    inherited = bench.evaluator(0)(bench.pretrained(), archs)
    val = SubnetEvaluator.batches(data.val)
    scratch, seconds = [], []
    for arch in archs:
        torch.manual_seed(0)
        model = supernets.build_static(arch, data.num_classes)
        start = time.perf_counter()
        finetune(model, data, arch.resolution, s.scratch_epochs, lr=s.scratch_lr, seed=0)
        seconds.append(time.perf_counter() - start)
        scratch.append(evaluate(model, val, arch.resolution))
    complexity = space.complexity(np.array(X[picks]), data.num_classes)
    rows = [
        [
            a.resolution,
            list(a.depths),
            f"{p:,}",
            f"{m:,}",
            f"{100 * i:.1f}",
            f"{100 * t:.1f}",
            f"{sec:.0f}",
        ]
        for a, p, m, i, t, sec in zip(archs, *complexity, inherited, scratch, seconds, strict=True)
    ]
    fidelity = rank_metrics(np.array(scratch), inherited)
    by_params = rank_metrics(np.array(scratch), complexity[0].astype(float))
    table = Table(
        f"Inherited-weight vs from-scratch validation accuracy ({len(archs)} subnets spread "
        f"over the params range up to {s.max_params:,.0f}; scratch: {s.scratch_epochs} epochs, "
        f"SGD lr {s.scratch_lr}, cosine)",
        ["px", "depths", "params", "MACs", "inherited %", "scratch %", "scratch s"],
        rows,
    )
    note = (
        f"Kendall tau (inherited, scratch) = {fidelity['kendall_tau']:.3f}, Spearman rho = "
        f"{fidelity['spearman_rho']:.3f}; for comparison, tau (params, scratch) = "
        f"{by_params['kendall_tau']:.3f}"
    )
    return Result(
        data={
            "archs": [a.to_dict() for a in archs],
            "inherited": inherited.tolist(),
            "scratch": scratch,
            "kendall_tau": fidelity["kendall_tau"],
            "spearman_rho": fidelity["spearman_rho"],
            "kendall_tau_params": by_params["kendall_tau"],
        },
        sections=[table, note],
    )
