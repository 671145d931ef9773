"""7b. The final recipe, part by part: the model a time-limited search hands back at the
full budget, trained from its inherited weights for the same epochs with each variant of
the recipe (torchvision.transforms.v2 policies, random erasing, MixUp / CutMix, label
smoothing, an EMA of the weights via torch.optim.swa_utils, distillation from the
supernet's teacher). A part stays in the defaults only if it measures better here. Equal
epochs, not equal seconds: this machine's speed drifts by up to a quarter from one five-minute
stretch to the next, which at equal seconds moved a variant by 5 epochs; each variant's
seconds are listed beside it."""

from __future__ import annotations

import json

import torch

import search_spaces
from nat.engine.problem import Budgets
from nat.io.checkpoint import load_supernet
from nat.prepare import load_data
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator
from nat.training.train import evaluate
from nat.training.trainer import Trainer

from .common import Bench, Result, Table
from .quality import handed_configs, quality_base, search_run


def _variant(
    options: dict, base: RunSpec, folder, data, budget: float, epochs: float, batches
) -> dict:
    spec = RunSpec.from_options(base, **options)
    top = handed_configs(folder)[-1]  # the model at the full budget
    arch = search_spaces.Arch.from_dict(top["arch"])
    supernet, _ = load_supernet(folder / "supernet.pt")
    evaluator = SubnetEvaluator(data, spec.search.bn_batches, spec.batch_size, 0)
    _, model = evaluator.evaluate_one(supernet, arch)
    teacher = None
    if spec.finetune.distill_weight > 0:
        space = supernet.space
        teacher_arch = Budgets(space, data.num_classes, budget).teacher(
            spec.pretrain.teacher_multiple
        )
        teacher = (evaluator.evaluate_one(supernet, teacher_arch)[1], teacher_arch.resolution)
    torch.manual_seed(0)
    run = Trainer(
        model,
        data,
        arch.resolution,
        spec.finetune,
        epochs=epochs,
        batch_size=spec.batch_size,
        seed=0,
        teacher=teacher,
    )
    run.train()
    trained = run.finish()
    val, test = (evaluate(trained, b, arch.resolution) for b in batches)
    return {
        "params": top["params"],
        "macs": top["macs"],
        "epochs": run.epochs,
        "seconds": run.seconds,
        "val": val,
        "test": test,
    }


def bench_recipe(bench: Bench) -> Result:
    s = bench.s
    base = quality_base(bench)
    data = load_data(base)
    batches = (SubnetEvaluator.batches(data.val), SubnetEvaluator.batches(data.test))
    budget, limit = s.quality_budgets[0], s.quality_limits[0]
    folder, _ = search_run(bench, base, budget, 0, limit)
    top = handed_configs(folder)[-1]
    rows = []
    for name, options in s.recipe_variants.items():
        key = {"run": str(folder), "arch": top["arch"], "options": options, "e": s.recipe_epochs}
        row = bench.cached(
            f"recipe-{len(rows)}",
            key,
            lambda options=options: _variant(
                options, base, folder, data, budget, s.recipe_epochs, batches
            ),
        )
        rows.append({"recipe": name, "options": options, **row})
        print(f"recipe {name}: {json.dumps(row)}", flush=True)
    table = Table(
        f"The final recipe at {budget / 1e3:,.0f}k: the handed-back model's architecture "
        f"({top['params']:,} params, {top['macs']:,} MACs) trained {s.recipe_epochs:g} epochs "
        "from its inherited weights with each variant: each row adds its part to the "
        "defaults (the first row)",
        ["recipe", "seconds", "val %", "test %"],
        [
            [r["recipe"], f"{r['seconds']:.0f}", f"{100 * r['val']:.1f}", f"{100 * r['test']:.1f}"]
            for r in rows
        ],
    )
    return Result(data={"rows": rows}, sections=[table])
