"""Multi-exit subnets with early exit (Addad et al.; MSDNet's budgeted batch classification).

One trained model serves every compute budget: an image leaves at exit k as soon as the
exit's largest softmax probability reaches θ_k, and the thresholds are fitted on validation
images for a target of expected MACs per image. Costs are analytic (the search spaces'
counts of each exit's prefix), so they agree with ``nat.profile`` on the model itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces import Arch, complexity
from supernets import StaticNet, build_static
from supernets.multiexit import MultiExitNet

from .data import DataSplits, resize_batch
from .io.checkpoint import load_weights
from .io.deploy import export_onnx, sample_images
from .io.files import atomic_write, markdown_table, save_figure, write_json
from .pruning import params_of
from .recipes import MULTI_EXIT
from .training.evaluate import SubnetEvaluator
from .training.train import evaluate, finetune, resized

__all__ = [
    "NEVER",
    "MultiExitLoss",
    "default_exits",
    "exit_costs",
    "exit_outputs",
    "fit_thresholds",
    "judge_multi_exit",
    "load_multi_exit",
    "most_accurate",
    "route",
    "run_front",
    "simulate",
]

NEVER = 2.0  # a threshold no softmax probability reaches: nobody leaves at that exit


def exit_costs(
    arch: Arch, exit_stages: Sequence[int], exit_channels: Sequence[int], num_classes: int
) -> np.ndarray:
    """MACs per image of leaving at each exit (the network's own classifier last): the stem,
    the stages up to the exit, and every exit computed on the way, since an image that goes
    on has paid for the exits it passed. Analytic: an exit is the family's head on a prefix
    of the architecture."""

    def macs(last_stage: int, head_channels: int, classes: int) -> int:
        prefix = dataclasses.replace(
            arch, stages=arch.stages[: last_stage + 1], head_channels=head_channels
        )
        return int(complexity(prefix, classes)[1])

    costs, exits_paid = [], 0
    for k, width in zip(exit_stages, exit_channels, strict=True):
        body = macs(k, 0, 1) - arch.stages[k].channels  # less a one-class linear layer
        exits_paid += macs(k, width, num_classes) - body
        costs.append(body + exits_paid)
    costs.append(macs(len(arch.stages) - 1, arch.head_channels, num_classes) + exits_paid)
    return np.asarray(costs, dtype=np.int64)


@torch.no_grad()
def exit_outputs(
    model: MultiExitNet, batches: Iterable, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct), both [images, exits]: each exit's largest softmax probability
    and whether its top-1 class is the label, over every image of ``batches`` at
    ``resolution`` px."""
    model.eval()
    device = next(model.parameters()).device
    confidence, correct = [], []
    for images, labels in resized(batches, resolution):
        outputs = model(images.to(device))
        probs = torch.stack([F.softmax(o.float(), dim=1) for o in outputs], 1).cpu()
        top, predicted = probs.max(2)
        confidence.append(top.numpy())
        correct.append((predicted == labels[:, None]).numpy())
    if not confidence:
        raise ValueError("no images to evaluate the exits on")
    return np.concatenate(confidence), np.concatenate(correct)


def route(confidence: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """The exit each image leaves at: the first exit k whose confidence reaches θ_k; the
    last exit (which has no threshold) takes every image the others kept."""
    confidence = np.asarray(confidence)
    last = confidence.shape[1] - 1
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.shape != (last,):
        raise ValueError(f"give {last} thresholds (one per exit but the last), got {thresholds}")
    leaves = confidence[:, :last] >= thresholds[None, :]
    return np.where(leaves.any(1), leaves.argmax(1), last)


def simulate(
    confidence: np.ndarray,
    correct: np.ndarray,
    thresholds: Sequence[float],
    costs: Sequence[int],
) -> dict:
    """Accuracy (0..1), expected MACs per image, and the fraction of images leaving at each
    exit, with ``thresholds``."""
    exits = route(confidence, thresholds)
    fractions = np.bincount(exits, minlength=confidence.shape[1]) / len(exits)
    return {
        "accuracy": float(np.asarray(correct)[np.arange(len(exits)), exits].mean()),
        "expected_macs": float(fractions @ np.asarray(costs, dtype=float)),
        "fractions": fractions.tolist(),
    }


def _thresholds_for(confidence: np.ndarray, p: float) -> np.ndarray:
    """MSDNet's thresholds for the exit distribution q_k ∝ p^k: going through the exits in
    order, the most confident of the images still there leave, q_k of all images at exit k."""
    n, exits = confidence.shape
    q = p ** np.arange(exits, dtype=float)
    q /= q.sum()
    remaining = np.ones(n, dtype=bool)
    thresholds = np.full(exits - 1, NEVER)
    for k in range(exits - 1):
        leaving = min(round(q[k] * n), int(remaining.sum()))
        if leaving == 0:
            continue
        ranked = np.sort(confidence[remaining, k])[::-1]
        thresholds[k] = ranked[leaving - 1]
        remaining &= confidence[:, k] < thresholds[k]
    return thresholds


def fit_thresholds(confidence: np.ndarray, costs: Sequence[int], target_macs: float) -> np.ndarray:
    """Thresholds (one per exit but the last) that spend at most ``target_macs`` MACs per
    image on average on these (validation) images, as MSDNet fits them: the exit distribution
    q_k ∝ p^k with the largest p (the most images reaching late, accurate exits) within the
    target, found by bisection on log p."""
    costs = np.asarray(costs, dtype=float)
    if target_macs < costs[0]:
        raise ValueError(
            f"an expected {target_macs:,.0f} MACs per image is below the first exit's "
            f"{costs[0]:,.0f} MACs: raise the target, or put the first exit after an earlier stage"
        )
    if target_macs >= costs[-1]:
        return np.full(len(costs) - 1, NEVER)
    if target_macs == costs[0]:
        return np.zeros(len(costs) - 1)  # every image leaves at the first exit

    def spent(log_p: float) -> float:
        exits = route(confidence, _thresholds_for(confidence, float(np.exp(log_p))))
        return float(np.mean(costs[exits]))

    low, high = -30.0, 30.0  # p = e^-30: all leave at the first exit; e^30: at the last
    for _ in range(50):
        middle = (low + high) / 2
        if spent(middle) <= target_macs:
            low = middle
        else:
            high = middle
    return _thresholds_for(confidence, float(np.exp(low)))


@dataclasses.dataclass(frozen=True)
class MultiExitLoss:
    """Training loss of a multi-exit network: the sum of every exit's cross-entropy with
    equal weights (MSDNet), plus ``distill_weight`` times each earlier exit's KL divergence
    from the last exit's softened prediction (temperature ``temperature``, scaled by its
    square as usual; the teacher side is detached, so distillation trains the early exits
    only)."""

    distill_weight: float = 0.5
    temperature: float = 2.0

    def __call__(self, outputs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss = sum(F.cross_entropy(o, labels) for o in outputs)
        if self.distill_weight and len(outputs) > 1:
            t = self.temperature
            soft = F.softmax(outputs[-1].detach() / t, dim=1)
            kd = sum(
                F.kl_div(F.log_softmax(o / t, dim=1), soft, reduction="batchmean")
                for o in outputs[:-1]
            )
            loss = loss + self.distill_weight * t * t * kd
        return loss


def default_exits(arch: Arch) -> tuple[int, ...]:
    """Where exits go unless told: after the last stage of each spatial scale but the last
    (the stage before each downsampling one), as MSDNet puts one exit per scale."""
    stages = arch.stages
    chosen = tuple(k for k in range(len(stages) - 1) if stages[k + 1].stride > 1)
    return chosen or (max(0, len(stages) // 2 - 1),)


def run_front(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """A ``nat search`` run's exported front: (folder, its config.json) in front order.
    ``most_accurate`` picks the one with the best validation accuracy."""
    folders = sorted(Path(run_dir, "front").glob("[0-9][0-9]"))
    if not folders:
        raise FileNotFoundError(f"{run_dir}/front/ holds no exported subnet: run the search")
    front = [(f, json.loads((f / "config.json").read_text())) for f in folders]
    missing = [f.name for f, c in front if "val_accuracy" not in c]
    if missing:
        raise ValueError(f"front subnet(s) {missing} of {run_dir} have no val_accuracy")
    return front


def most_accurate(front: Sequence[tuple[Path, dict]]) -> Path:
    """The folder of the front subnet with the best validation accuracy."""
    return max(front, key=lambda pair: pair[1]["val_accuracy"])[0]


def load_multi_exit(folder: str | Path) -> MultiExitNet:
    """The model a :func:`judge_multi_exit` folder holds (eval mode, CPU)."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / "multiexit.json").read_text())
        net = build_static(Arch.from_dict(doc["arch"]), int(doc["num_classes"]))
        model = MultiExitNet(net, doc["exit_stages"], doc["exit_channels"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder} is not a `nat multi-exit` folder ({err})") from None
    state = load_weights(folder / "weights.pt")
    try:
        model.load_state_dict(state)
    except (OSError, RuntimeError, TypeError, AttributeError) as err:  # not a state_dict
        raise ValueError(f"{folder / 'weights.pt'} does not fit multiexit.json: {err}") from None
    return model.eval()


def judge_multi_exit(
    net: StaticNet,
    data: DataSplits,
    out: Path,
    exits: Sequence[int] | None = None,
    epochs: int = MULTI_EXIT.epochs,
    lr: float = MULTI_EXIT.lr,
    points: int = MULTI_EXIT.points,
    front: Sequence[dict] = (),
    onnx: bool = True,
    seed: int = MULTI_EXIT.seed,
    progress: bool = True,
) -> dict:
    """Put exits on ``net`` (trained weights) after the stages ``exits`` (default
    :func:`default_exits`), train it whole for ``epochs`` with :class:`MultiExitLoss` (peak
    ``lr``: the exits start from random weights, and on digits 0.05 left them 14-27 points
    more accurate than 0.01, the last exit 3 points), then
    fit thresholds on the validation split for ``points`` targets of expected MACs between
    the first exit's cost and the full network's, and score each on the test split.

    ``front``: single-exit subnets to compare with (dicts with ``params``, ``macs`` and
    ``test_accuracy``, as a run's front/NN/config.json holds them). ``net`` is trained in
    place. Writes into ``out``: multiexit.json (the architecture, exits, costs, thresholds
    of every point: what :func:`load_multi_exit` rebuilds the model from), multiexit.md,
    multiexit.png (the curve over the front), weights.pt and model.onnx (every exit an
    output). Returns the JSON."""
    if epochs < 0 or points < 2:
        raise ValueError(f"epochs must be at least 0 and points at least 2, got {epochs}, {points}")
    arch = net.arch
    model = MultiExitNet(net, default_exits(arch) if exits is None else exits)
    num_classes = net.classifier.out_features
    costs = exit_costs(arch, model.exit_stages, model.exit_channels, num_classes)
    before = evaluate(net, SubnetEvaluator.batches(data.test), arch.resolution)
    if epochs:
        finetune(
            model,
            data,
            arch.resolution,
            epochs,
            lr=lr,
            seed=seed,
            progress=progress,
            criterion=MultiExitLoss(),
        )
    val = exit_outputs(model, SubnetEvaluator.batches(data.val), arch.resolution)
    test = exit_outputs(model, SubnetEvaluator.batches(data.test), arch.resolution)
    curve = []
    for target in np.linspace(costs[0], costs[-1], points):
        thresholds = fit_thresholds(val[0], costs, float(target))
        curve.append(
            {
                "target_macs": float(target),
                "thresholds": thresholds.tolist(),
                "val": simulate(*val, thresholds, costs),
                "test": simulate(*test, thresholds, costs),
            }
        )
    params = params_of(model)
    doc = {
        "arch": arch.to_dict(),
        "num_classes": num_classes,
        "exit_stages": list(model.exit_stages),
        "exit_channels": list(model.exit_channels),
        "params": params,
        "single_exit_params": params_of(net),
        "exit_macs": costs.tolist(),
        "epochs": epochs,
        "lr": lr,
        "single_exit_test_accuracy_before": before,
        "exit_test_accuracy": test[1].mean(0).tolist(),
        "exit_val_accuracy": val[1].mean(0).tolist(),
        "curve": curve,
        "versus_front": _versus_front(curve, front),
    }
    out.mkdir(parents=True, exist_ok=True)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    atomic_write(out / "weights.pt", lambda f: f.write(state.getbuffer()))
    if onnx:
        batch = resize_batch(sample_images(data.test), arch.resolution)
        doc["onnx_max_abs_diff"] = export_onnx(model, batch, out / "model.onnx")
    write_json(out / "multiexit.json", doc)
    atomic_write(out / "multiexit.md", lambda f: f.write(_markdown(doc).encode()))
    _plot(doc, front, out / "multiexit.png")
    return doc


def _accuracy_at(curve: Sequence[dict], macs: float) -> float | None:
    """The multi-exit model's test accuracy at the largest target within ``macs`` (the
    point is chosen by its target, fitted on validation, never by test accuracy)."""
    within = [c for c in curve if c["target_macs"] <= macs]
    return max(within, key=lambda c: c["target_macs"])["test"]["accuracy"] if within else None


def _versus_front(curve: Sequence[dict], front: Sequence[dict]) -> list[dict]:
    return [
        {
            "params": f["params"],
            "macs": f["macs"],
            "single_exit_test_accuracy": f["test_accuracy"],
            "multi_exit_test_accuracy": _accuracy_at(curve, f["macs"]),
        }
        for f in sorted(front, key=lambda f: f["macs"])
    ]


def _markdown(doc: dict) -> str:
    exits = ", ".join(
        f"after stage {k} ({c:,} MACs)"
        for k, c in zip(doc["exit_stages"], doc["exit_macs"], strict=False)
    )
    lines = [
        "# Multi-exit subnet\n",
        f"Exits {exits}; the network's own classifier at {doc['exit_macs'][-1]:,} MACs. "
        f"{doc['params']:,} parameters ({doc['single_exit_params']:,} without the exits), "
        f"trained {doc['epochs']} epoch(s) at lr {doc['lr']}. Thresholds fitted on the "
        "validation split for each target; accuracy and expected MACs per image measured on "
        f"the test split. Single-exit test accuracy before: "
        f"{doc['single_exit_test_accuracy_before']:.1%}; each exit alone after: "
        + ", ".join(f"{a:.1%}" for a in doc["exit_test_accuracy"])
        + ".\n",
        markdown_table(
            ["target MACs", "test expected MACs", "test accuracy", "leaving at each exit"],
            [
                [
                    f"{c['target_macs']:,.0f}",
                    f"{c['test']['expected_macs']:,.0f}",
                    f"{c['test']['accuracy']:.1%}",
                    " / ".join(f"{q:.0%}" for q in c["test"]["fractions"]),
                ]
                for c in doc["curve"]
            ],
        ),
    ]
    if doc["versus_front"]:
        lines += [
            "\n## Against the single-exit front, at each front subnet's MACs\n",
            markdown_table(
                ["front params", "front MACs", "front test accuracy", "multi-exit within MACs"],
                [
                    [
                        f"{f['params']:,}",
                        f"{f['macs']:,}",
                        f"{f['single_exit_test_accuracy']:.1%}",
                        "-"
                        if f["multi_exit_test_accuracy"] is None
                        else f"{f['multi_exit_test_accuracy']:.1%}",
                    ]
                    for f in doc["versus_front"]
                ],
            ),
        ]
    return "\n".join(lines)


def _plot(doc: dict, front: Sequence[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    curve = doc["curve"]
    ax.plot(
        [c["test"]["expected_macs"] / 1e6 for c in curve],
        [100 * c["test"]["accuracy"] for c in curve],
        "o-",
        label="multi-exit (expected MACs)",
    )
    if front:
        ax.scatter(
            [f["macs"] / 1e6 for f in front],
            [100 * f["test_accuracy"] for f in front],
            color="tab:red",
            marker="s",
            label="single-exit front",
        )
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
