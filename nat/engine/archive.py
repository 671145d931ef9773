"""The archive of real evaluations, and the multi-objective views of it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

import search_spaces
from search_spaces import SearchSpace

if TYPE_CHECKING:
    from ..latency import LatencyTable

from ..io.files import write_json

__all__ = ["Archive", "Entry", "rank_order"]

FORMAT = "nat-archive/2"


@dataclass
class Entry:
    """One real evaluation: validation accuracy (0..1) of the subnet ``x`` with inherited
    weights and recalibrated BatchNorm; ``params``; ``macs`` per image; ``latency``: predicted
    ms at batch 1 (None when the run has no latency table); ``peak_memory`` and
    ``model_size``: bytes at the archive's precision."""

    x: list[int]
    accuracy: float
    params: int
    macs: int
    source: str  # "doe", "smallest", "largest", "heuristic", "warm-start", "search"
    iteration: int
    latency: float | None = None
    peak_memory: int | None = None
    model_size: int | None = None


class Archive:
    """Evaluated architectures of one space, at most one entry per encoding."""

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        latency: LatencyTable | None = None,
        precision: str = "fp32",
    ) -> None:
        self.space, self.num_classes, self.latency = space, num_classes, latency
        self.precision = precision
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, x: np.ndarray) -> bool:
        key = [int(v) for v in x]
        return any(e.x == key for e in self.entries)

    @property
    def X(self) -> np.ndarray:
        return np.array([e.x for e in self.entries], dtype=np.int64).reshape(-1, self.space.n_var)

    @property
    def accuracy(self) -> np.ndarray:
        return np.array([e.accuracy for e in self.entries], dtype=np.float64)

    def add(self, X: np.ndarray, accuracy: np.ndarray, source: str, iteration: int) -> None:
        """Record evaluated encodings; their complexity is computed here, analytically."""
        X = np.atleast_2d(X)
        accuracy = np.asarray(accuracy, dtype=np.float64)
        if not np.all(np.isfinite(accuracy)):
            raise ValueError("an evaluation returned a non-finite accuracy; it is not recorded")
        costs = self.space.costs(X, self.num_classes)
        latency = self.latency.predict(X) if self.latency is not None else [None] * len(X)
        for x, acc, ms in zip(X, accuracy, latency, strict=True):
            if x in self:
                raise ValueError(f"architecture {list(x)} is already in the archive")
            ms = None if ms is None else round(float(ms), 4)
            entry = Entry([int(v) for v in x], float(acc), 0, 0, source, iteration, ms)
            self.entries.append(entry)
        self._count(self.entries[len(self.entries) - len(X) :], costs)

    def _count(self, entries: list[Entry], costs) -> None:
        """Fill ``entries``' analytic costs from ``costs`` (a Tally of their encodings)."""
        columns = {
            "params": costs.params,
            "macs": costs.macs,
            "peak_memory": costs.peak_memory(self.precision),
            "model_size": costs.model_size(self.precision),
        }
        for i, entry in enumerate(entries):
            for name, values in columns.items():
                setattr(entry, name, int(values[i]))

    def attach_latency(self, latency: LatencyTable | None) -> None:
        """Predict every entry's latency with ``latency`` (None: drop the predictions)."""
        self.latency = latency
        if not self.entries:
            return
        predicted = latency.predict(self.X) if latency is not None else [None] * len(self)
        for entry, ms in zip(self.entries, predicted, strict=True):
            entry.latency = None if ms is None else round(float(ms), 4)

    def set_accuracy(self, accuracy: np.ndarray) -> None:
        """Replace every accuracy (after the supernet's weights changed)."""
        for entry, acc in zip(self.entries, accuracy, strict=True):
            entry.accuracy = float(acc)

    def objectives(self, metrics: tuple[str, ...]) -> np.ndarray:
        """(n, 1 + len(metrics)) array to minimise: error, then each complexity metric."""
        if "latency" in metrics and any(e.latency is None for e in self.entries):
            raise ValueError("latency is an objective but the archive has no latency table")
        cols = [1.0 - self.accuracy] + [
            np.array([getattr(e, m) for e in self.entries], dtype=np.float64) for m in metrics
        ]
        return np.stack(cols, axis=1)

    def front(self, metrics: tuple[str, ...]) -> list[int]:
        """Indices of the non-dominated entries, sorted by the first complexity metric."""
        if not self.entries:
            return []
        F = self.objectives(metrics)
        front = NonDominatedSorting().do(F, only_non_dominated_front=True)
        return sorted((int(i) for i in front), key=lambda i: (F[i, 1], F[i, 0]))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "precision": self.precision,
            "entries": [asdict(e) for e in self.entries],
        }

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Write the archive atomically as JSON, with ``extra`` top-level fields."""
        return write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def from_dict(cls, doc: dict) -> Archive:
        if doc.get("format") != FORMAT:
            raise ValueError(f"archive format is {doc.get('format')!r}, expected {FORMAT!r}")
        space = search_spaces.from_dict(doc["space"])
        archive = cls(space, int(doc["num_classes"]), precision=doc.get("precision", "fp32"))
        archive.entries = [Entry(**e) for e in doc["entries"]]
        if archive.entries and any(e.peak_memory is None for e in archive.entries):
            archive._count(archive.entries, space.costs(archive.X, archive.num_classes))
        return archive

    @classmethod
    def load(cls, path: str | os.PathLike) -> Archive:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"archive {path} is not readable: {err}") from err


def rank_order(F: np.ndarray) -> np.ndarray:
    """Indices of all rows of F, best first: by non-dominated front, then by decreasing
    crowding distance within a front (NSGA-II's survival order)."""
    fronts = NonDominatedSorting().do(F)
    order = []
    for front in fronts:
        front = np.asarray(front)
        crowding = (
            calc_crowding_distance(F[front]) if len(front) > 2 else np.full(len(front), np.inf)
        )
        order.extend(front[np.argsort(-crowding, kind="stable")].tolist())
    return np.array(order, dtype=np.int64)
