"""11. Pruning against search: on seed 0's NAT run, the space's largest subnet pruned to each
budget while fine-tuning (torch-pruning; L1 magnitude and Taylor importance), beside the
heuristic and the best searched subnet fine-tuned as many epochs. Then Cortesi's transfer
setting: that largest subnet, trained on the suite's data, moved to digits and either
fine-tuned whole or pruned to a budget during the same epochs."""

from __future__ import annotations

from nat.compare import compare
from nat.data import load_dataset
from nat.io.files import mean_std
from nat.profile import profile
from nat.pruning import NEW_TASK_LR, transfer
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate

from .common import Bench, Result, Table, pct


def bench_pruning(bench: Bench) -> Result:
    s = bench.s
    folder, _ = bench.nat_run(s.seeds[0])
    budgets = [f * s.max_params for f in s.pruning_fractions]
    rows = compare(
        folder,
        budgets,
        seeds=s.pruning_seeds,
        finetune_epochs=s.finetune_epochs,
        bn_batches=s.bn_batches,
        progress=False,
        methods=("heuristic", "searched", *(f"pruned-{i}" for i in s.pruning_importances)),
    )
    table = [
        [
            f"{r['budget']:,.0f}",
            r["method"],
            *(
                ["nothing fits", "", ""]
                if r["params"] is None
                else [f"{r['params']:,}", f"{r['macs']:,}", pct(*r["finetuned"])]
            ),
        ]
        for r in rows
    ]
    transfer = _transfer(bench, budgets)
    sections = [
        Table(
            f"Pruned vs searched vs heuristic at equal params (test accuracy %, mean ± std over "
            f"seeds {list(s.pruning_seeds)}; {s.finetune_epochs} epoch(s) of fine-tuning for "
            "every method, pruning during them; pruned: the space's largest subnet, inherited)",
            ["budget", "method", "params", "MACs", "fine-tuned"],
            table,
        ),
        Table(
            f"Transfer (Cortesi): the largest subnet trained on the suite's data, then "
            f"{s.transfer_epochs} epoch(s) on digits at lr {NEW_TASK_LR} (test accuracy %, seeds "
            f"{list(s.pruning_seeds)})",
            ["method", "params", "MACs", "digits test"],
            [
                [t["method"], f"{t['params']:,}", f"{t['macs']:,}", pct(*t["test"])]
                for t in transfer
            ],
        ),
    ]
    return Result(
        data={"rows": rows, "transfer": transfer},
        sections=sections,
        copies={"pruning.png": folder / "compare.png"},
    )


def _transfer(bench: Bench, budgets: list[float]) -> list[dict]:
    s = bench.s
    supernet = bench.pretrained()
    arch = bench.space.largest()
    source = SubnetEvaluator(bench.data, s.bn_batches, seed=0).evaluate_one(supernet, arch)[1]
    target = load_dataset("digits", arch.resolution, seed=0, subset=s.transfer_subset)
    test = SubnetEvaluator.batches(target.test)
    plans = [("fine-tuned, unpruned", None, None)] + [
        (f"pruned-{imp} to {b:,.0f}", imp, b) for b in budgets for imp in s.pruning_importances
    ]
    out = []
    for label, importance, budget in plans:
        scores, params, macs = [], 0, 0
        for seed in s.pruning_seeds:
            model = transfer(source, target, arch.resolution, budget, importance or "l1",
                             s.transfer_epochs, seed=seed)  # fmt: skip
            scores.append(evaluate(model, test, arch.resolution))
            params, macs = profile(model, arch.resolution)
        out.append({"method": label, "params": params, "macs": macs, "test": mean_std(scores)})
        print(f"pruning transfer {label}: {out[-1]['test'][0]:.1%}", flush=True)
    return out
