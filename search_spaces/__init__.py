"""Search spaces: integer encodings of architectures, sampling, repair and analytic
parameter, MAC, peak-memory and model-size counts. Numpy only; nothing here imports torch."""

from . import mbv2, resnet, shufflenetv2  # noqa: F401  (fill the registry)
from .arch import STEM_STRIDES, STEMS, Arch, ArchArrays, Block, Stage, make_divisible
from .base import SearchSpace, complexity, costs, from_dict, get, list_spaces, register
from .counting import COST_METRICS, PRECISIONS, Tally
from .units import BLOCK, FIRST_BLOCK, HEAD, STEM, UNIT_FIELDS, units_of_arrays

__all__ = [
    "BLOCK",
    "COST_METRICS",
    "FIRST_BLOCK",
    "HEAD",
    "PRECISIONS",
    "STEM",
    "STEMS",
    "STEM_STRIDES",
    "UNIT_FIELDS",
    "Arch",
    "ArchArrays",
    "Block",
    "SearchSpace",
    "Stage",
    "Tally",
    "complexity",
    "costs",
    "from_dict",
    "get",
    "list_spaces",
    "make_divisible",
    "register",
    "units_of_arrays",
]
