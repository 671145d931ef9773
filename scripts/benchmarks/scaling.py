"""14. Source training on a cluster: steps per second of supernet pre-training in one process
and on two Ray Train workers (``nat train-supernet --workers 2``), the gradient all-reduce
against the step, and from those the step time to expect on 8 workers. This machine has two
cores, so two workers share them with nothing to spare: it cannot show a speed-up, only
what data parallelism costs."""

from __future__ import annotations

import shutil
import time

import numpy as np
import torch

from nat.backends.ray import ray_session
from nat.backends.ray_train import pretrain_data_parallel
from nat.prepare import initial_supernet, load_data, pretrain_supernet
from nat.spec import RunSpec
from nat.transfer import spec_for_budgets

from .common import Bench, Result, Table
from .transfer import class_data_spec

# Gloo's ring all-reduce moves 2(W-1)/W of the gradients per worker (bandwidth) in 2(W-1)
# hops (latency): from W=2 to W=8, 1.75x the bytes and 7x the hops.
_BYTES_8, _HOPS_8 = 1.75, 7.0
# Table rows of two workers and of the 8 projected, without and with pooled BatchNorm.
_LABELS = {
    False: ("Ray Train, 2 workers of 1 thread", "Ray Train, 8 workers (projected)"),
    True: (
        "the same, BatchNorm pooled (--sync-batch-norm)",
        "the same, BatchNorm pooled (projected)",
    ),
}


def _spec(bench: Bench) -> RunSpec:
    """The transfer benchmark's source supernet (``--budgets``), for one epoch."""
    s = bench.s
    spec = class_data_spec(bench, s.source_classes, s.scaling_subset, None)
    spec = RunSpec.from_options(spec, pretrain_epochs=1, pretrain_batch_size=s.scaling_batch)
    return spec_for_budgets(spec, s.source_budgets, len(s.source_classes))


def _one_process(spec: RunSpec, threads: int) -> float:
    """Median seconds of a pre-training step in this process on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = load_data(spec)
        supernet, _ = initial_supernet(spec, data)
        marks: list[float] = []

        def mark(_: object) -> None:
            marks.append(time.perf_counter())

        pretrain_supernet(spec, data, supernet, progress=False, before_step=mark)
    finally:
        torch.set_num_threads(before)
    return float(np.median(np.diff(marks)))


def _two_workers(bench: Bench, spec: RunSpec, synced: bool) -> dict:
    """The last epoch's timing on two Ray Train workers (inside a Ray session)."""
    data = load_data(spec)
    supernet, _ = initial_supernet(spec, data)
    storage = bench.out / "cache" / "scaling-ray-train"
    shutil.rmtree(storage, ignore_errors=True)
    _, metadata = pretrain_data_parallel(
        spec, supernet, 2, storage, threads=1, sync_batch_norm=synced
    )
    shutil.rmtree(storage, ignore_errors=True)
    return metadata["last_epoch_timing"]


def _row(setting: str, workers: int, step: float, reduce=None, rest=None) -> list:
    """A table row: seconds and steps/s of a step, and its communication when measured."""
    comm = ["" if v is None else f"{v:.3f}" for v in (reduce, rest)]
    return [setting, workers, f"{step:.3f}", f"{1 / step:.2f}", *comm]


def bench_scaling(bench: Bench) -> Result:
    spec = _spec(bench)
    data = load_data(spec)
    steps = len(data.train) // spec.pretrain.batch_size
    single = _one_process(spec, 1)
    both_cores = _one_process(spec, 2)
    pooling = (False, True) if bench.s.scaling_pooled_batch_norm else (False,)
    with ray_session(workers=2):  # one start of Ray serves every run
        timings = [_two_workers(bench, spec, synced) for synced in pooling]
    rows = [
        _row("one process, 1 thread", 1, single),
        _row("one process, 2 threads", 1, both_cores),
    ]
    data_doc = {
        "steps_per_epoch": steps,
        "batch_size": spec.pretrain.batch_size,
        "one_thread_step_s": single,
        "two_thread_step_s": both_cores,
    }
    projected = []
    for synced, timing in zip(pooling, timings, strict=True):
        step2, reduce2 = timing["step_seconds"], timing["allreduce_seconds"]
        # The model: a step on W workers = the one-thread step / W + communication; of that,
        # the gradient all-reduce grows with the bytes, the rest (pooled BatchNorm's small
        # collectives, each worker loading the whole batch, Ray) with the hops: an upper
        # bound.
        rest2 = max(0.0, step2 - single / 2 - reduce2)
        step8 = single / 8 + reduce2 * _BYTES_8 + rest2 * _HOPS_8
        two, eight = _LABELS[synced]
        rows.append(_row(two, 2, step2, reduce2, rest2))
        projected.append(_row(eight, 8, step8, reduce2 * _BYTES_8, rest2 * _HOPS_8))
        if synced:
            data_doc |= {
                "two_worker_pooled_batch_norm_step_s": step2,
                "eight_worker_pooled_speedup_projected": single / step8,
            }
        else:
            data_doc |= {
                "two_worker_step_s": step2,
                "two_worker_allreduce_s": reduce2,
                "two_worker_other_communication_s": rest2,
                "eight_worker_step_s_projected": step8,
                "eight_worker_speedup_projected": single / step8,
            }
    pooled = data_doc.get("eight_worker_pooled_speedup_projected")
    text = (
        f"{steps} steps of batch {spec.pretrain.batch_size} at {max(bench.s.source_budgets):,.0f} "
        f"parameters. Projected speed-up of 8 workers over one single-thread process: "
        f"{data_doc['eight_worker_speedup_projected']:.1f}x"
        + (f", {pooled:.1f}x with BatchNorm pooled" if pooled is not None else "")
        + f" (the all-reduce taken to grow {_BYTES_8}x, the other communication "
        f"{_HOPS_8:.0f}x from 2 workers). Two workers here share the two cores that one process "
        "with 2 threads uses: a gain over it comes from two processes instead of two threads, "
        "not from hardware."
    )
    headers = ["setting", "workers", "step s", "steps/s", "gradient all-reduce s", "other comm. s"]
    table = Table("Supernet pre-training steps", headers, rows + projected)
    return Result(data_doc, [table, text])
