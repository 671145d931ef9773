"""Searching from a source supernet (``nat search --checkpoint``): the run takes the space the
supernet was trained for, refuses one that conflicts, and says when its budget lies outside
the range the supernet was trained to cover. Neural Architecture Transfer (Lu et al.) then
adapts it to the new data: its classifier is rebuilt for the target's classes
(:func:`nat.prepare.initial_supernet`) and pre-training continues on top of it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import search_spaces

from .fields import OptionError
from .spec import RunSpec

__all__ = ["budget_warning", "source_summary", "spec_for_checkpoint"]

# Subnets far outside the budgets a supernet was trained for got few updates (the sandwich
# rule samples within a multiple of the largest budget, uniformly in size).
_COVERED_BELOW, _COVERED_ABOVE = 0.5, 1.5


def spec_for_budgets(spec: RunSpec, budgets: Iterable[float], num_classes: int) -> RunSpec:
    """``spec`` for a supernet that serves every parameter budget of ``budgets`` (``nat
    train-supernet --budgets``): width choices fitted to each budget (their union; given
    ``width_mults`` win), the sampling and teacher within the largest (``max_params``)."""
    from .engine.heuristic import budget_width_mults

    budgets = list(budgets)
    options: dict = {"max_params": max(budgets)}
    if "width_mults" not in spec.space_options:
        space = spec.build_space()
        try:
            fitted = {
                w for b in budgets for w in budget_width_mults(space, num_classes, {"params": b})
            }
        except ValueError as err:
            raise OptionError("--budgets", str(err)) from None
        options["width_mults"] = sorted(fitted)
    return RunSpec.from_options(spec, **options)


def spec_for_checkpoint(spec: RunSpec, given: Iterable[str], header: dict | None = None) -> RunSpec:
    """``spec`` with the space and space options of its checkpoint, from ``header``
    (:func:`nat.io.checkpoint.read_supernet_header`, read here when not given), where the
    options ``given`` by the user name none; ``spec`` as it is without a checkpoint. A
    ``--space`` or a space option that differs from the checkpoint's is an OptionError naming
    both."""
    if spec.checkpoint is None:
        return spec
    if header is None:
        from .io.checkpoint import read_supernet_header  # torch, only with a checkpoint

        header = read_supernet_header(spec.checkpoint)
    given = set(given)
    source = f"--checkpoint {spec.checkpoint}"
    if "space" in given and spec.space != header["space"]:
        raise OptionError(
            "--space",
            f"--space {spec.space} conflicts with {source}, a supernet of space "
            f"{header['space']!r}: drop --space, or give a {spec.space} checkpoint",
        )
    saved = search_spaces.get(header["space"], **header["space_options"])
    try:
        asked = search_spaces.get(header["space"], **{**saved.options, **spec.space_options})
    except (TypeError, ValueError) as err:
        raise OptionError("space_options", f"{err} (the space of {source})") from None
    differ = sorted(k for k in saved.options if asked.options[k] != saved.options[k])
    if differ:
        shown = "; ".join(f"{k} {asked.options[k]} against {saved.options[k]}" for k in differ)
        raise OptionError(
            "--" + differ[0].replace("_", "-"),
            f"{shown} in {source}: drop them to search the supernet's own space, or train "
            "a supernet for this one",
        )
    return RunSpec.from_options(spec, space=header["space"], space_options=saved.options)


def budget_warning(spec: RunSpec, header: dict, num_classes: int | None = None) -> str | None:
    """What to expect when the run's parameter budget lies outside the range the checkpoint
    was trained to cover (its ``budgets``; else its space's smallest and largest subnets),
    or None when it lies inside."""
    budget = spec.search.max_params
    if budget is None:
        return None
    covered = header["metadata"].get("budgets")
    space = search_spaces.get(header["space"], **header["space_options"])
    classes = num_classes or header["num_classes"]
    if covered:
        low, high = min(covered) * _COVERED_BELOW, max(covered) * _COVERED_ABOVE
        what = f"trained for budgets {_sizes(covered)}"
    else:
        low = space.complexity(space.smallest(), classes)[0]
        high = space.complexity(space.largest(), classes)[0]
        what = f"a supernet of {low:,}-{high:,} params"
    if low <= budget <= high:
        return None
    if budget > high:
        expect = (
            "subnets that large got few or no updates, so expect less from their inherited "
            "weights; pre-train longer with --pretrain-epochs, or train a supernet for it"
        )
    else:
        expect = (
            "subnets that small were rarely sampled, so expect their inherited accuracy to "
            "say less; pre-train longer with --pretrain-epochs, or train a supernet for it"
        )
    return f"--max-params {budget:,.0f} is outside what {spec.checkpoint} covers ({what}): {expect}"


def source_summary(path: str | Path, header: dict) -> dict:
    """The checkpoint a run started from, as report.md and archive.json record it."""
    meta = header["metadata"]
    data = meta.get("data") or {}
    return {
        "path": str(path),
        "space": header["space"],
        "num_classes": header["num_classes"],
        "data": data.get("source"),
        "class_names": meta.get("class_names"),
        "epochs": meta.get("epochs"),
        "budgets": meta.get("budgets"),
        "train_seconds": meta.get("train_seconds"),
    }


def _sizes(values: Iterable[float]) -> str:
    return ", ".join(f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k" for v in values)
