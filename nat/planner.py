"""A run's wall-clock budget (``--time-limit``): the split of the time among pre-training,
search and final training, planned from step times measured at the start of the run, and
the record of what each stage actually took.

The plan is a pure function of the limit, the time already spent and the measured times
(:func:`plan_run`), so the same measurements always give the same split. Stages then run
to their own budgets (training schedules follow elapsed time, see
:mod:`nat.training.trainer`); the final training gets whatever time is left when it starts,
so an earlier stage that ran long or short moves the rest, never the deadline.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field

from .race import race_cost

__all__ = [
    "EXPORT_MARGIN",
    "EXPORT_SECONDS",
    "FIRST_RUNG",
    "TOP_SHARE",
    "FinalPlan",
    "Plan",
    "RunClock",
    "StepTimes",
    "plan_final",
    "plan_run",
]

# Seconds kept back for each handed-back model's export and scoring when the run could not
# time one (no budget to build the heuristic's subnet at): the dynamo ONNX export took 4-16 s
# per subnet here, docs/benchmarks.md §9. A measured export is kept back EXPORT_MARGIN times
# over (it is the largest model's; the smaller ones export faster), and the report beside.
EXPORT_SECONDS = {"onnx": 10.0, "plain": 2.0}
EXPORT_MARGIN = 1.25
REPORT_SECONDS = 2.0  # writing the report took 0.3 s of a run on digits
# An adaptation shorter than this fraction of a pre-training epoch is not worth its
# re-evaluation of the archive: the iteration runs without it.
MIN_ADAPT_EPOCHS = 0.25
# Surrogate fitting and NSGA-II on it, per iteration (measured: 1-6 s).
PROPOSE_SECONDS = 6.0
# The model at the full budget gets this share of the final training, its race included: it
# is the one most users deploy. Equal epochs for all three handed back at 300k on CIFAR-10
# would have given it about 30 epochs instead of 45 (docs/benchmarks.md, section 7).
TOP_SHARE = 0.6
# The race's first rung, as a fraction of a candidate's schedule: with 4 candidates halved
# twice, the survivor is known at 1/8 of its schedule and the losers cost 1/4 of one.
FIRST_RUNG = 1 / 16
# A supernet trained for less than this many epochs is not worth searching: the run trains
# the heuristic's subnets instead (at 1.5 epochs, on CIFAR-10 at 300k, the race chose the
# heuristic's subnet over every searched one, docs/benchmarks.md section 7).
MIN_PRETRAIN_EPOCHS = 2.0
# The heuristic's seeds by default, as fractions of the budgets: the models handed back.
SEED_FRACTIONS = (1 / 4, 1 / 2, 1.0)


@dataclass(frozen=True)
class StepTimes:
    """Times measured at the start of a run, in seconds: one epoch of supernet training
    (sandwich rule, at the pre-training batch size), one subnet evaluation (extraction,
    BatchNorm recalibration, validation) and, when the run has a budget, one epoch of final
    training of the heuristic's subnet at it and that subnet's export as the run writes it
    (ONNX, int8 and their scoring; None: not measured)."""

    pretrain_epoch: float
    evaluation: float
    final_epoch: float | None = None
    export: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None and name in ("final_epoch", "export"):
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


@dataclass
class Plan:
    """Seconds given to each stage, and the search's shape they afford. ``spent``: seconds
    already gone when the plan was made (data loading, measuring)."""

    limit: float
    spent: float
    reserve: float  # exports, scoring and the report
    pretrain: float
    search: float
    final: float
    pretrain_epochs: float  # expected, from the measured epoch time
    doe_size: int
    iterations: int
    adapt_seconds: float  # per iteration; 0: no adaptation
    times: StepTimes | None = None
    # "search", or "heuristic": no supernet training and no search, the heuristic's subnets
    # trained from scratch in all of `final`
    strategy: str = "search"
    reason: str = ""  # why this strategy, in one sentence for the report
    actual: dict = field(default_factory=dict)  # stage -> seconds, filled as the run goes

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["times"] = asdict(self.times) if self.times is not None else None
        return doc


@dataclass(frozen=True)
class SearchBudget:
    """A time-limited search's shape, from :func:`nat.planner.plan_run`: the design of
    experiments' random subnets, at most ``iterations`` iterations, each adapting the supernet
    for ``adapt_seconds`` (0: no adaptation), all before ``deadline``
    (``time.perf_counter()`` seconds). ``evaluation_seconds``: one evaluation, measured.
    ``seed_fractions``: the heuristic's seeds, as fractions of the budgets (one per model a
    heuristic plan hands back)."""

    doe_size: int
    iterations: int
    adapt_seconds: float
    deadline: float
    evaluation_seconds: float
    seed_fractions: tuple[float, ...] = SEED_FRACTIONS


def _search_shape(
    seconds: float,
    times: StepTimes,
    fixed: int,
    doe_size: int,
    candidates: int,
    max_iterations: int,
    adapt: bool,
) -> tuple[int, int, float]:
    """(doe_size, iterations, adaptation seconds per iteration) that fit ``seconds``: the
    design of experiments first (``fixed`` seeds beside ``doe_size`` random subnets, shrunk
    to fit but at least 4), then as many iterations as fit, up to ``max_iterations``, each
    with an adaptation as long as the rest allows (at most one pre-training epoch) when
    ``adapt``."""
    evaluation = times.evaluation
    affordable = int(seconds // evaluation) - fixed
    doe = max(min(4, doe_size), min(doe_size, affordable))
    left = seconds - (fixed + doe) * evaluation
    for n in range(max_iterations, 0, -1):
        archive = fixed + doe
        plain = n * (candidates * evaluation + PROPOSE_SECONDS)
        if plain > left:
            continue
        if not adapt:
            return doe, n, 0.0
        reevaluations = sum(archive + i * candidates for i in range(n)) * evaluation
        per_iteration = (left - plain - reevaluations) / n
        adapt_s = min(per_iteration, times.pretrain_epoch)
        if adapt_s >= MIN_ADAPT_EPOCHS * times.pretrain_epoch:
            return doe, n, adapt_s
        if n == 1:
            return doe, 1, 0.0
    return doe, 0, 0.0


def plan_run(
    limit: float,
    spent: float,
    times: StepTimes,
    *,
    pretrain_share: float,
    search_share: float,
    models: int,
    onnx: bool,
    pretrain: bool = True,
    fixed_evaluations: int = 5,
    doe_size: int = 16,
    candidates: int = 8,
    max_iterations: int = 10,
    adapt: bool = True,
    strategy: str = "search",
    final_epochs: float = 0.0,
    race_size: int = 1,
) -> Plan:
    """Split ``limit - spent`` seconds: a reserve for exporting ``models`` models (by the
    measured ``times.export``, else a guess for ONNX or not) and the report, then
    ``pretrain_share`` of the rest to supernet pre-training (none when ``pretrain`` is False:
    the run starts from a trained checkpoint), ``search_share`` to the search, the rest to
    the race and final training. Raises ValueError when the limit leaves no time to train.

    ``strategy`` "heuristic" gives all of it but the seeds' evaluations to final training
    (no pre-training, no search); "auto" does so when searching would leave the model at the
    budget (``TOP_SHARE`` of the final training when ``models`` > 1, less its race of
    ``race_size``) fewer than ``final_epochs`` epochs at ``times.final_epoch``, or the
    supernet fewer than ``MIN_PRETRAIN_EPOCHS``; else, and with "search", the shares hold."""
    if times.export is None:
        per_model = EXPORT_SECONDS["onnx" if onnx else "plain"]
    else:
        per_model = EXPORT_MARGIN * times.export
    reserve = models * per_model + REPORT_SECONDS
    available = limit - spent - reserve
    # The least a run can do: one evaluation per fixed seed and a little training.
    least = fixed_evaluations * times.evaluation + 0.5 * times.pretrain_epoch
    if available < least:
        raise ValueError(
            f"a time limit of {_clock(limit)} leaves {_clock(max(0.0, available))} after "
            f"loading the data ({_clock(spent)}) and keeping {_clock(reserve)} for exports; "
            f"this run needs at least {_clock(least + spent + reserve)} (one evaluation takes "
            f"{times.evaluation:.1f} s, a pre-training epoch {times.pretrain_epoch:.0f} s)"
        )
    if strategy not in ("auto", "search", "heuristic"):
        raise ValueError(f"unknown strategy {strategy!r}")
    pretrain_s = pretrain_share * available if pretrain else 0.0
    search_s = search_share * available
    reason = _heuristic_reason(
        available - pretrain_s - search_s, pretrain_s, times, final_epochs, models, race_size
    )
    if strategy == "heuristic" or (strategy == "auto" and reason and times.final_epoch):
        search_s = fixed_evaluations * times.evaluation  # the seeds, for the archive
        return Plan(
            limit=limit,
            spent=spent,
            reserve=reserve,
            pretrain=0.0,
            search=search_s,
            final=available - search_s,
            pretrain_epochs=0.0,
            doe_size=0,
            iterations=0,
            adapt_seconds=0.0,
            times=times,
            strategy="heuristic",
            reason=reason if strategy == "auto" else "chosen with --strategy heuristic",
        )
    doe, iterations, adapt_s = _search_shape(
        search_s, times, fixed_evaluations, doe_size, candidates, max_iterations, adapt
    )
    return Plan(
        limit=limit,
        spent=spent,
        reserve=reserve,
        pretrain=pretrain_s,
        search=search_s,
        final=available - pretrain_s - search_s,
        pretrain_epochs=pretrain_s / times.pretrain_epoch,
        doe_size=doe,
        iterations=iterations,
        adapt_seconds=adapt_s,
        times=times,
        reason="" if strategy == "search" else "the model at the budget gets its epochs after it",
    )


def _heuristic_reason(
    final: float,
    pretrain: float,
    times: StepTimes,
    final_epochs: float,
    models: int,
    race_size: int,
) -> str:
    """Why a search does not pay within the plan (empty when it does): ``final`` seconds
    of final training leave the model at the budget fewer than ``final_epochs`` epochs, or
    ``pretrain`` seconds (0: a trained checkpoint) train the supernet for fewer than
    ``MIN_PRETRAIN_EPOCHS``."""
    if 0 < pretrain < MIN_PRETRAIN_EPOCHS * times.pretrain_epoch:
        return (
            f"pre-training would get {pretrain / times.pretrain_epoch:.1f} epochs, fewer than "
            f"{MIN_PRETRAIN_EPOCHS:g}"
        )
    if times.final_epoch is None:
        return ""
    share = TOP_SHARE if models > 1 else 1.0
    top = share * final / (1 + race_cost(race_size, FIRST_RUNG))
    epochs = top / times.final_epoch
    if epochs < final_epochs:
        return (
            f"after a search the model at the budget would get {epochs:.0f} epochs "
            f"({times.final_epoch:.1f} s each), fewer than --final-epochs {final_epochs:g}"
        )
    return ""


@dataclass(frozen=True)
class FinalPlan:
    """Seconds of training for each handed-back model: ``front`` for the smaller ones, in
    their order, each ``epochs`` epochs by its measured epoch time; ``top`` for the model at
    the full budget (each race entrant's schedule), ``race`` what the race's losers are
    expected to take beside it."""

    epochs: float
    front: tuple[float, ...]
    top: float
    race: float


def plan_final(
    seconds: float,
    front_epoch_seconds: list[float],
    candidates: int,
    first_rung: float,
    top_share: float = TOP_SHARE,
    reduction_factor: int = 2,
) -> FinalPlan:
    """Share ``seconds`` of final training: ``top_share`` of it to the model at the full
    budget, its race included (all of it when there is no smaller model), the rest to the
    smaller models in equal epochs by their measured epoch times
    (``front_epoch_seconds``)."""
    share = top_share if front_epoch_seconds else 1.0
    waste = race_cost(candidates, first_rung, reduction_factor)
    top = share * seconds / (1 + waste)
    rest = seconds - share * seconds
    epochs = rest / sum(front_epoch_seconds) if front_epoch_seconds else 0.0
    return FinalPlan(
        epochs=epochs,
        front=tuple(epochs * s for s in front_epoch_seconds),
        top=top,
        race=top * waste,
    )


class RunClock:
    """The run's wall clock: when it started, its deadline (None without a limit), and the
    seconds each stage took."""

    def __init__(self, limit: float | None, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.limit = limit
        self.deadline = None if limit is None else self.start + limit
        self.stages: dict[str, float] = {}
        self._stage: tuple[str, float] | None = None
        self._bar = None
        self._stop = threading.Event()

    def show(self) -> None:
        """A progress bar of the run's time against its limit, refreshed every second from a
        background thread, with the stage and the time left (nothing without a limit)."""
        if self.limit is None or self._bar is not None:
            return
        from tqdm.auto import tqdm

        self._bar = bar = tqdm(
            total=round(self.limit), desc="run", unit="s", leave=False, dynamic_ncols=True
        )

        def refresh() -> None:
            while not self._stop.wait(1.0):
                bar.n = min(bar.total, round(self.elapsed()))
                stage = self._stage[0] if self._stage else ""
                bar.set_postfix_str(f"{stage}, {self.status()}", refresh=True)

        threading.Thread(target=refresh, daemon=True).start()

    def close(self) -> None:
        """End the current stage and the progress bar."""
        self.end()
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        """Seconds to the deadline (None without a limit)."""
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def begin(self, stage: str) -> None:
        """Start timing ``stage`` (ending the one before)."""
        self.end()
        self._stage = (stage, time.perf_counter())

    def end(self) -> None:
        if self._stage is not None:
            name, began = self._stage
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - began
            self._stage = None

    def status(self) -> str:
        """'12:30 left' or '4:10 elapsed', for progress bars and logs."""
        left = self.left()
        return f"{_clock(self.elapsed())} elapsed" if left is None else f"{_clock(left)} left"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
