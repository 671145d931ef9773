"""Class-incremental learning under a memory budget: memoryless LUCIR, and architectures
judged by it (``nat cil``)."""

from .protocol import (
    CILConfig,
    CosineClassifier,
    IncrementalNet,
    Scenario,
    distill_weight,
    imprint,
    run_protocol,
)

__all__ = [
    "CILConfig",
    "CosineClassifier",
    "IncrementalNet",
    "Scenario",
    "distill_weight",
    "imprint",
    "run_protocol",
]
