"""10. The latency predictor: for each family and runtime, the time to build the unit table, and
predicted against measured whole-model latency at batch 1 (one thread) over random subnets:
median and worst relative error, Spearman rho. Then the constraint a search enforces: of
the subnets predicted within a budget (the median prediction), how far the measured latency
goes past it."""

from __future__ import annotations

import statistics

import numpy as np
from scipy.stats import spearmanr

import search_spaces
import supernets
from nat import latency

from .common import Bench, Result, Table


def bench_latency(bench: Bench) -> Result:
    s = bench.s
    rows, tables = [], []
    for runtime in s.latency_runtimes:
        for name in search_spaces.list_spaces():
            space = search_spaces.get(name, **s.latency_space_options)
            table = latency.build_table(
                space,
                10,
                runtime,
                1,
                s.latency_rounds,
                s.latency_calibration,
                dynamo=s.latency_dynamo,
            )
            X = space.sample(s.latency_archs, np.random.default_rng(0))
            predicted = table.predict(X)
            calls = []
            for x in X:
                arch = space.decode(x)
                model = supernets.build_static(arch, 10).eval()
                side = arch.resolution
                calls.append(
                    latency.runner(model, (1, 3, side, side), runtime, 1, dynamo=s.latency_dynamo)
                )
            # The table's own calibration subnets, timed with them, tell how much the
            # machine's speed has drifted since the table was built.
            X_ref, references = latency.reference_calls(
                space, 10, runtime, 1, s.latency_calibration, s.latency_dynamo
            )
            # Measured like the units: interleaved rounds, the fastest run of each.
            measured = latency.fastest_ms(calls + references, 1, s.latency_rounds)
            measured, measured_ref = measured[: len(X)], measured[len(X) :]
            drift = latency.speed_factor(table, X_ref, measured_ref) if len(X_ref) else 1.0
            error = (predicted - measured) / measured
            drift_error = (predicted * drift - measured) / measured
            raw_error = (table.unit_sum(X) - measured) / measured
            rho = float(spearmanr(predicted, measured)[0]) if len(X) > 2 else float("nan")
            budget = float(np.median(predicted))
            admitted = predicted <= budget
            overshoot = float(np.max(measured[admitted] / budget - 1))
            row = {
                "runtime": runtime,
                "space": name,
                "units": len(table.rows),
                "build_s": table.build_seconds,
                "subnets": len(X),
                "median_abs_error": float(np.median(np.abs(error))),
                "uncalibrated_median_abs_error": float(np.median(np.abs(raw_error))),
                "scale": table.scale,
                "power": table.power,
                "worst_abs_error": float(np.max(np.abs(error))),
                "speed_factor": drift,
                "drift_corrected_median_abs_error": float(np.median(np.abs(drift_error))),
                "mean_error": float(np.mean(error)),
                "spearman": rho,
                "measured_ms": measured.tolist(),
                "predicted_ms": predicted.tolist(),
                "budget_ms": budget,
                "admitted": int(admitted.sum()),
                "worst_overshoot": overshoot,
            }
            rows.append(row)
            print(
                f"latency {runtime} {name}: {row['units']} units in {row['build_s']:.0f} s; "
                f"median |error| {row['median_abs_error']:.1%}, rho {rho:.3f}, worst "
                f"overshoot of a {budget:.2f} ms budget {overshoot:+.1%}",
                flush=True,
            )
    tables.append(
        Table(
            f"Predicted (sum of units, calibrated on {s.latency_calibration} other subnets; "
            "uncalibrated: the plain sum) vs measured whole-model latency, batch 1, one thread, "
            "slowdown: the calibration subnets timed again with the subnets, measured ÷ "
            "predicted, "
            f"{s.latency_archs} random subnets per family of the default spaces; onnxruntime "
            f"runs the {'dynamo-exported model.onnx' if s.latency_dynamo else 'fast export'}",
            [
                "runtime",
                "space",
                "units",
                "table build s",
                "median |error|",
                "uncalibrated",
                "worst |error|",
                "mean error",
                "slowdown since build",
                "median |error| at that speed",
                "Spearman rho",
                "measured ms",
            ],
            [
                [
                    r["runtime"],
                    r["space"],
                    r["units"],
                    f"{r['build_s']:.0f}",
                    f"{r['median_abs_error']:.1%}",
                    f"{r['uncalibrated_median_abs_error']:.1%}",
                    f"{r['worst_abs_error']:.1%}",
                    f"{r['mean_error']:+.1%}",
                    f"{r['speed_factor']:.2f}",
                    f"{r['drift_corrected_median_abs_error']:.1%}",
                    f"{r['spearman']:.3f}",
                    f"{min(r['measured_ms']):.2f} to {max(r['measured_ms']):.2f}",
                ]
                for r in rows
            ],
        )
    )
    tables.append(
        Table(
            "The constraint: subnets predicted within a budget (the median prediction), measured",
            ["runtime", "space", "budget ms", "admitted", "worst measured over budget"],
            [
                [
                    r["runtime"],
                    r["space"],
                    f"{r['budget_ms']:.2f}",
                    f"{r['admitted']}/{r['subnets']}",
                    f"{r['worst_overshoot']:+.1%}",
                ]
                for r in rows
            ],
        )
    )
    summary = {
        "median_abs_error": statistics.median(r["median_abs_error"] for r in rows),
        "min_spearman": min(r["spearman"] for r in rows),
    }
    return Result(data={"rows": rows, "summary": summary}, sections=tables)
