"""Assemble and run a search from a :class:`~nat.spec.RunSpec`: the one path that ``nat
search``, ``nat.search()``, ``--resume``, ``nat compare`` and the benchmarks share.

Order of work, so that mistakes cost seconds: the spec is validated (options, paths, Ray
address), the run folder checked (an existing run is refused unless resumed or overwritten),
the data loaded and the budgets checked against it; only then is anything written or trained.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from supernets import Supernet, build_static

from .data import DataSplits
from .engine.heuristic import budget_width_mults, feillet_within
from .engine.loop import NATSearch, SearchResult
from .engine.problem import BudgetError, Budgets
from .folder import (
    PRETRAIN_FILE,
    RUN_FILE,
    check_free_space,
    device_of,
    fits_widths_to_budget,
    locked_run_folder,
    remove_outputs,
)
from .handback import hand_back
from .io.checkpoint import read_supernet_header, save_supernet
from .io.files import write_json
from .planner import SEED_FRACTIONS, Plan, RunClock, SearchBudget, StepTimes, plan_run
from .prepare import (
    data_settings_of,
    initial_supernet,
    load_data,
    pretrain_supernet,
    pretraining_keywords,
    run_budgets,
)
from .spec import OptionError, RunSpec, spec_error_names
from .training.evaluate import SubnetEvaluator
from .training.train import measure_pretrain_epoch
from .training.trainer import measure_step_seconds
from .transfer import budget_warning, source_summary

__all__ = ["measure", "run_checked"]


def measure(
    spec: RunSpec, data: DataSplits, supernet: Supernet, budgets: Budgets, final: bool = True
) -> StepTimes:
    """The step times a plan needs, measured on this machine now: one pre-training epoch
    (from timed sandwich steps), one evaluation, the mean of the space's smallest subnet's
    and the pre-training anchor's at the budget, one final-training epoch of the heuristic's
    subnet at the budget and that subnet's export. The search evaluates subnets spread
    between the two: the anchor's time alone, about 3x the mean on CIFAR-10 at 300k, left no
    iteration in a 30-minute plan although one fitted (docs/benchmarks.md, section 7).
    ``final``: False leaves the final-training epoch out (a plan that searches whatever it
    costs)."""
    from .report import measure_export  # matplotlib: imported by the report all the same

    training = pretraining_keywords(spec, budgets)
    heuristic = _heuristic_at_budget(budgets, data.num_classes)
    final_epoch = export = None
    if heuristic is not None:
        model = build_static(heuristic, data.num_classes)
        if final:
            step = measure_step_seconds(
                model, data, heuristic.resolution, spec.batch_size, training["device"]
            )
            final_epoch = step * max(1, len(data.train) // spec.batch_size)
        int8 = spec.search.precision == "int8"
        export = measure_export(model, heuristic, data, spec.finetune.onnx, int8)
    epoch = measure_pretrain_epoch(supernet, data, spec.pretrain, **training)
    evaluator = SubnetEvaluator(
        data, spec.search.bn_batches, spec.batch_size, spec.seed, device=training["device"]
    )
    start = time.perf_counter()
    for arch in (supernet.space.smallest(), training["anchor"]):
        evaluator.evaluate_one(supernet, arch)
    evaluation = (time.perf_counter() - start) / 2
    return StepTimes(epoch, evaluation, final_epoch, export)


def _heuristic_at_budget(budgets: Budgets, num_classes: int):
    """The Feillet heuristic's subnet at the run's analytic budgets (None without any)."""
    if not budgets.cost_limits:
        return None
    scaled = feillet_within(budgets.cost_limits, num_classes, budgets.space, budgets.precision)
    return scaled.arch


def run_checked(
    spec: RunSpec, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> SearchResult:
    """Run the search ``spec`` describes (or continue it, with ``resume``), ``spec`` as
    :func:`nat.folder.preflight` returned it: :func:`nat.run_spec` is the path that checks
    it first. The run folder is held for this process and checked again once held (another
    search may have started in it since). See the module docstring for the order of work;
    with ``spec.plan.time_limit``, the stages are sized by :mod:`nat.planner` to end within
    it."""
    clock = RunClock(spec.plan.time_limit)
    try:
        if spec.out is None:
            return _run(spec, clock, resume, overwrite, progress)
        with locked_run_folder(Path(spec.out), resume, overwrite):
            return _run(spec, clock, resume, overwrite, progress)
    finally:
        clock.close()


def _run(
    spec: RunSpec, clock: RunClock, resume: bool, overwrite: bool, progress: bool
) -> SearchResult:
    from .report import write_outputs  # matplotlib only when files are written

    clock.begin("data")
    out = Path(spec.out) if spec.out is not None else None
    data = load_data(spec)
    metadata = {"class_names": data.class_names}
    if spec.checkpoint is not None:
        header = read_supernet_header(spec.checkpoint)
        metadata["source_supernet"] = source_summary(spec.checkpoint, header)
        warning = budget_warning(spec, header, data.num_classes)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    if fits_widths_to_budget(spec):
        widths = spec_error_names(lambda: _budget_widths(spec, data.num_classes))
        spec = RunSpec.from_options(spec, width_mults=list(widths))
        metadata["width_mults_from_budget"] = list(widths)
        if progress:
            print(f"width choices fitted to the budget: {', '.join(map(str, widths))}")
    # Before any training: a bad budget, or the latency table it needs, shows at once.
    budgets = spec_error_names(lambda: run_budgets(spec, data.num_classes, progress))
    state = out / "resume" / "state.json" if out is not None else None
    resuming_search = state is not None and resume and state.is_file()
    if resume and not resuming_search and any(state.parent.glob("supernet-*.pt")):
        raise ValueError(
            f"{state} is missing beside the search's snapshots: the run cannot continue; "
            "pass --overwrite instead of --resume to start it again"
        )
    say = _say(clock, progress)
    if progress:
        clock.show()
    plan = supernet = None
    if not resuming_search:  # measured and planned before anything is written
        supernet, trains = initial_supernet(spec, data)
        if out is not None:
            check_free_space(out, supernet)
        if spec.plan.time_limit is not None:
            clock.begin("measure")
            plan = _plan(spec, data, supernet, budgets, trains, clock, say)
            metadata["strategy"] = plan.strategy
            trains = trains and plan.strategy == "search"
    if out is not None and not resume:  # a resume keeps run.json until it has succeeded
        if overwrite:
            remove_outputs(out)
        write_json(out / RUN_FILE, spec.to_dict())
    with _backends(spec, budgets.space, data.num_classes, out, progress) as (runner, adapter):
        if resuming_search:
            search = NATSearch.resume(
                out,
                data,
                spec.search,
                runner=runner,
                progress=progress,
                metadata=metadata,
                adapter=adapter,
                device=device_of(spec),
                pretrain=spec.pretrain,
                budgets=budgets,
            )
            if spec.plan.time_limit is not None:
                clock.begin("measure")
                strategy = _saved_strategy(out)
                plan = _plan(spec, data, search.supernet, budgets, False, clock, say, strategy)
                metadata["strategy"] = plan.strategy
        if not resuming_search:
            clock.begin("pretrain")
            if trains:
                pretrain = out / PRETRAIN_FILE if out is not None else None
                seconds = plan.pretrain if plan is not None else None
                if seconds is not None and resume and pretrain is not None:
                    seconds = _planned_seconds(pretrain) or seconds
                supernet = pretrain_supernet(
                    spec, data, supernet, pretrain, resume, progress, seconds, budgets
                )
            if out is not None:
                save_supernet(out / "supernet.pt", supernet, pretrained=True)
            torch.manual_seed(spec.seed)
            search = NATSearch(
                supernet,
                data,
                spec.search,
                out,
                runner,
                progress,
                metadata,
                adapter,
                device_of(spec),
                spec.pretrain,
                budgets,
            )
        clock.begin("search")
        budget = None
        if plan is not None:
            fractions = SEED_FRACTIONS
            if plan.strategy == "heuristic":  # one seed per handed-back model's target
                k = spec.finetune.front_size
                fractions = tuple(2.0**-j for j in range(k - 1, -1, -1))
                say(f"no supernet and no search: {plan.reason}; the heuristic's subnets train")
            else:
                say(
                    f"search: {plan.doe_size} random subnets, up to {plan.iterations} "
                    f"iteration(s), adaptation {plan.adapt_seconds:.0f} s each"
                )
            budget = SearchBudget(
                plan.doe_size,
                plan.iterations,
                plan.adapt_seconds,
                time.perf_counter() + max(0.0, clock.left() - plan.final - plan.reserve),
                plan.times.evaluation,
                fractions,
            )
        result = search.run(budget)
    clock.begin("final")
    heuristic = plan is not None and plan.strategy == "heuristic"
    seconds = deadline = None
    if plan is not None:
        deadline = clock.deadline - plan.reserve
        seconds = max(1.0, deadline - time.perf_counter())
        say(f"final training: {seconds:.0f} s for {spec.finetune.front_size} models")
    models = hand_back(
        search,
        result,
        spec.finetune,
        seconds=seconds,
        deadline=deadline,
        device=device_of(spec),
        progress=progress,
        log=say,
        heuristic_only=heuristic,
        fresh_weights=heuristic and spec.checkpoint is None,
    )
    handed = replace(result, models=models)
    clock.begin("export")
    if out is not None:
        write_outputs(search, handed, out, onnx=spec.finetune.onnx, exports_only=True)
    clock.end()
    timed = replace(handed, timing=_timing(clock, plan))
    if out is not None:
        write_outputs(search, timed, out, onnx=spec.finetune.onnx, exports_only=False)
        write_json(out / RUN_FILE, {**spec.to_dict(), "timing": timed.timing})
        (out / PRETRAIN_FILE).unlink(missing_ok=True)  # the search has its own snapshots
    return replace(timed, seconds=clock.elapsed())


def _plan(
    spec: RunSpec,
    data: DataSplits,
    supernet: Supernet,
    budgets: Budgets,
    trains: bool,
    clock: RunClock,
    say: Callable[[str], None],
    strategy: str | None = None,
) -> Plan:
    """Measure, then plan the stages within the time limit; say what the plan is.
    ``strategy``: the one a resumed run started with (default: the spec's)."""
    strategy = strategy or spec.plan.strategy
    times = measure(spec, data, supernet, budgets, final=strategy != "search")
    if strategy == "heuristic" and times.final_epoch is None:
        raise OptionError(
            "--strategy", "'heuristic' needs a budget to scale to: give --max-params or --max-macs"
        )
    search = spec.search
    fixed = 2 + len(search.heuristic_budgets or (1, 2, 3))  # smallest, largest, heuristic
    try:
        plan = plan_run(
            spec.plan.time_limit,
            clock.elapsed(),
            times,
            pretrain_share=spec.plan.pretrain_share,
            search_share=spec.plan.search_share,
            models=spec.finetune.front_size,
            onnx=spec.finetune.onnx,
            pretrain=trains,
            fixed_evaluations=fixed,
            doe_size=search.doe_size,
            candidates=search.candidates,
            adapt=search.adapt_epochs > 0,
            strategy=strategy,
            final_epochs=spec.plan.final_epochs,
            race_size=spec.finetune.race_size,
        )
    except ValueError as err:
        raise OptionError("--time-limit", str(err)) from None
    say(
        f"plan for {spec.plan.time_limit:.0f} s: pre-training {plan.pretrain:.0f} s (about "
        f"{plan.pretrain_epochs:.1f} epochs at {times.pretrain_epoch:.0f} s), search "
        f"{plan.search:.0f} s (an evaluation takes {times.evaluation:.1f} s), final training "
        f"{plan.final:.0f} s, exports {plan.reserve:.0f} s"
    )
    return plan


def _saved_strategy(out: Path) -> str:
    """The plan strategy a resumed run started with, from its archive.json: a run that
    trained the heuristic's subnets must not start searching an untrained supernet."""
    try:
        return json.loads((out / "archive.json").read_text()).get("strategy", "search")
    except (OSError, ValueError, AttributeError):
        return "search"


def _planned_seconds(checkpoint: Path) -> float | None:
    """The seconds a killed time-limited pre-training was planned for: its resume continues
    that schedule to its end (None: no such checkpoint)."""
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        return json.loads(payload["metadata"])["train_config"].get("seconds")
    except Exception:  # missing (a damaged file is refused by load_training_state)
        return None


def _say(clock: RunClock, progress: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"[{clock.status()}] {text}")

    return say


def _timing(clock: RunClock, plan: Plan | None) -> dict:
    """The record of a run's time: the limit, the plan and each stage's actual seconds,
    which add up to the wall time (the rest, a few milliseconds, is 'other')."""
    stages = {k: round(v, 2) for k, v in clock.stages.items()}
    wall = clock.elapsed()
    stages["other"] = round(max(0.0, wall - sum(clock.stages.values())), 2)
    return {
        "limit": clock.limit,
        "wall": round(wall, 2),
        "actual": stages,
        "plan": plan.to_dict() if plan is not None else None,
    }


def _budget_widths(spec: RunSpec, num_classes: int) -> tuple[float, ...]:
    search = spec.search
    try:
        return budget_width_mults(
            spec.build_space(), num_classes, search.cost_limits, precision=search.precision
        )
    except BudgetError as err:
        raise OptionError(f"max_{err.metric}", str(err)) from None


@contextmanager
def _backends(
    spec: RunSpec, space, num_classes: int, out: Path | None, progress: bool
) -> Iterator[tuple[Any, Any]]:
    """(runner, adapter): (None, None) to evaluate and adapt in this process, else Ray actors
    for evaluation and, with ``adapt_workers`` >= 2, Ray Train for adaptation."""
    backend, search_config = spec.backend, spec.search
    if backend.in_process:
        yield None, None
        return
    from .backends.ray import RayRunner, check_workers, ray_session
    from .backends.ray_train import RayTrainAdapter

    workers = check_workers(backend.workers) if backend.workers is not None else None
    settings = data_settings_of(spec)
    with ray_session(workers, backend.address) as cpus:
        n = workers or max(1, cpus)
        adapt_workers = backend.adapt_workers
        # The phases alternate, so evaluation actors and training workers share the CPUs.
        share = cpus / (n + adapt_workers) if adapt_workers else 1
        runner = RayRunner(
            settings,
            space,
            num_classes,
            n,
            search_config.bn_batches,
            search_config.batch_size,
            search_config.seed,
            cpus_per_worker=share,
            threads=max(1, cpus // n),
            progress=progress,
        )
        adapter = None
        if adapt_workers:
            storage = Path(out or tempfile.mkdtemp(prefix="nat-")) / "ray-train"
            adapter = RayTrainAdapter(
                settings,
                adapt_workers,
                storage,
                cpus_per_worker=share,
                threads=max(1, cpus // adapt_workers),
            )
        yield runner, adapter
