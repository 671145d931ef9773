"""2. Heuristic vs searched: ``nat compare`` on seed 0's NAT run, at fractions of the budget,
with the heuristic also trained from scratch."""

from __future__ import annotations

from nat.compare import compare

from .common import Bench, Result, Table, pct


def bench_heuristic(bench: Bench) -> Result:
    s = bench.s
    folder, _ = bench.nat_run(s.seeds[0])
    rows = compare(
        folder,
        [f * s.max_params for f in s.budget_fractions],
        seeds=s.finetune_seeds,
        finetune_epochs=s.finetune_epochs,
        bn_batches=s.bn_batches,
        progress=False,
        scratch=True,
        methods=("heuristic", "searched"),
    )
    table = []
    for r in rows:
        if r["params"] is None:
            table.append([f"{r['budget']:,.0f}", r["method"], "nothing fits", "", "", ""])
            continue
        table.append(
            [
                f"{r['budget']:,.0f}",
                r["method"],
                f"{r['params']:,}",
                f"{r['macs']:,}",
                pct(*r["inherited"]) if r["inherited"] else "-",
                pct(*r["finetuned"]),
            ]
        )
    title = (
        f"Heuristic vs best searched (test accuracy %, mean ± std over fine-tuning seeds "
        f"{list(s.finetune_seeds)}; {s.finetune_epochs} epoch(s) of fine-tuning, or of "
        "training from scratch)"
    )
    headers = ["budget", "method", "params", "MACs", "inherited", "fine-tuned / trained"]
    return Result(
        data={"rows": rows},
        sections=[Table(title, headers, table)],
        copies={"heuristic.png": folder / "compare.png"},
    )
