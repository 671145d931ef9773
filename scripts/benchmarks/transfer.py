"""13. Train once, search many: does a supernet trained on a source task make a search on a
small target task better than starting from scratch, at equal target wall time? The source
is six of CIFAR-10's classes, the target the other four at 1,000 training images (the
target's test split is read by nothing else). Rows, each given the same target minutes:
(i) ``nat search`` from scratch on the target; (ii) ``nat search --checkpoint`` from the
source supernet; (iii) the stock peer (``shared/REFERENCE.md``) from scratch; (iv) the stock
peer pre-trained on the source for as long as the source supernet trained, then fine-tuned:
the honest transfer baseline."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from nat.cli import main as nat_main
from nat.io.checkpoint import read_supernet_header
from nat.prepare import load_data
from nat.spec import RunSpec
from nat.training.evaluate import SubnetEvaluator
from nat.transfer import spec_for_checkpoint

from .common import Bench, Result, Table
from .quality import feillet_peer, handed_configs, row_of, train_recipe

_PEER = "mobilenet_v2"


def class_data_spec(
    bench: Bench, classes: tuple[str, ...], subset: int | None, holdout: float | None
) -> RunSpec:
    """The benchmark data restricted to ``classes`` (``subset`` images of the archive; a
    validation and a test split of ``holdout`` each when given)."""
    s = bench.s
    fractions = {"val_fraction": holdout, "test_fraction": holdout} if holdout else {}
    return RunSpec.from_options(
        space=s.quality_space,
        data=bench.pretrain_spec.data.source,
        classes=list(classes),
        subset=subset,
        resolutions=[s.quality_resolution],
        seed=0,
        split_seed=0,
        **fractions,
        **s.quality_options,
    )


def _source(bench: Bench) -> tuple[Path, float]:
    """The source supernet (``nat train-supernet --budgets``), trained once and cached."""
    s = bench.s
    spec = class_data_spec(bench, s.source_classes, s.source_subset, None)
    path = bench.out / "cache" / "transfer-source.pt"
    budgets = ",".join(f"{b:.0f}" for b in s.source_budgets)
    argv = [
        "train-supernet",
        "--space",
        spec.space,
        "--space-options",
        _json(spec.space_options),
        "--data",
        spec.data.source,
        "--classes",
        ",".join(s.source_classes),
        *(["--subset", str(s.source_subset)] if s.source_subset else []),
        "--epochs",
        str(s.source_epochs),
        "--budgets",
        budgets,
        "--quiet",
        "--out",
        str(path),
    ]

    def train() -> dict:
        import time

        path.unlink(missing_ok=True)
        start = time.perf_counter()
        if nat_main(argv) != 0:
            raise RuntimeError(f"nat {' '.join(argv)} failed")
        return {"seconds": time.perf_counter() - start}

    done = bench.cached("transfer-source", {"argv": argv}, train)
    if not path.is_file():  # the record outlived its checkpoint: train again
        (bench.out / "cache" / "transfer-source.json").unlink()
        done = bench.cached("transfer-source", {"argv": argv}, train)
    return path, done["seconds"]


def _json(value: dict) -> str:
    import json

    return json.dumps(value)


def _peer(data, budget: float, seconds: float, batches, init=None, label="") -> dict:
    """The stock peer trained with the stock recipe for about ``seconds`` (its epochs sized
    by one timed epoch of a copy), from ``init``'s weights when given (classifier new)."""
    torch.manual_seed(0)
    model, width = feillet_peer(_PEER, budget, data.num_classes)
    if init is not None:
        model.load_state_dict(
            {k: v for k, v in init.state_dict().items() if not k.startswith("classifier")},
            strict=False,
        )
    per_epoch = train_recipe(copy.deepcopy(model), data, data.image_size, 1)
    epochs = max(1, round(seconds / per_epoch))
    spent = train_recipe(model, data, data.image_size, epochs)
    row = row_of(f"{label} {_PEER} w{width}", model, data.image_size, spent, epochs, batches)
    return row


def bench_transfer(bench: Bench) -> Result:
    s = bench.s
    source_path, source_seconds = _source(bench)
    header = read_supernet_header(source_path)
    target_spec = class_data_spec(bench, s.target_classes, s.target_subset, s.quality_holdout)
    target = load_data(target_spec)
    batches = (SubnetEvaluator.batches(target.val), SubnetEvaluator.batches(target.test))
    print(
        f"transfer: source {source_seconds:.0f} s; target {len(target.train)} / "
        f"{len(target.val)} / {len(target.test)} images",
        flush=True,
    )
    rows = []
    for budget in s.source_budgets:
        label, limit = f"{budget / 1e3:,.0f}k", s.target_limit
        peer = min(limit, s.peer_seconds or limit)
        timed = RunSpec.from_options(target_spec, max_params=budget, time_limit=limit)
        runs = {
            "(i) nat search from scratch": (timed, ""),
            "(ii) nat search --checkpoint source": (
                spec_for_checkpoint(
                    RunSpec.from_options(timed, checkpoint=str(source_path)), set(), header
                ),
                str(source_seconds),
            ),
        }
        for method, (spec, depends) in runs.items():
            key = f"transfer-{method[1:3].strip(')')}-{label}-{limit:.0f}s"
            folder, wall = bench.cached_run(key, spec, depends)
            best = max(handed_configs(folder), key=lambda c: c["val_accuracy"])
            rows.append(
                {
                    "budget": label,
                    "method": method,
                    "params": best["params"],
                    "seconds": wall,
                    "val": best["val_accuracy"],
                    "test": best["test_accuracy"],
                }
            )

        def scratch(budget=budget, peer=peer) -> dict:
            return _peer(target, budget, peer, batches, label="(iii) from scratch:")

        def pretrained(budget=budget, peer=peer) -> dict:
            source = load_data(class_data_spec(bench, s.source_classes, s.source_subset, None))
            torch.manual_seed(0)
            model, _ = feillet_peer(_PEER, budget, source.num_classes)
            per_epoch = train_recipe(copy.deepcopy(model), source, source.image_size, 1)
            epochs = max(1, round(source_seconds / per_epoch))
            train_recipe(model, source, source.image_size, epochs)
            row = _peer(target, budget, peer, batches, init=model, label="(iv) pre-trained:")
            return row | {"source_epochs": epochs}

        for name, compute in (("iii", scratch), ("iv", pretrained)):
            key = {"budget": budget, "limit": peer, "source": source_seconds, "name": name}
            row = bench.cached(f"transfer-{name}-{label}-{limit:.0f}s", key, compute)
            rows.append({"budget": label, **row})
    table = Table(
        f"Target test accuracy ({len(target.test):,} held-out images of "
        f"{', '.join(s.target_classes)}; {len(target.train):,} training images); every row "
        f"{s.target_limit / 60:g} min on the target. The source supernet: "
        f"{', '.join(s.source_classes)}, {s.source_epochs} epochs, {source_seconds:.0f} s",
        ["budget", "method", "params", "target s", "val %", "test %"],
        [
            [
                r["budget"],
                r["method"],
                f"{r['params']:,}",
                f"{r['seconds']:.0f}",
                f"{100 * r['val']:.1f}",
                f"{100 * r['test']:.1f}",
            ]
            for r in rows
        ],
    )
    return Result(data={"rows": rows, "source_seconds": source_seconds}, sections=[table])
