"""Search spaces: integer encodings of architectures, sampling, repair and analytic
parameter / MAC counts. Numpy only; nothing here imports torch."""

from . import mbv2, resnet, shufflenetv2  # noqa: F401  (fill the registry)
from .arch import STEM_STRIDES, STEMS, Arch, ArchArrays, Block, Stage, make_divisible
from .base import SearchSpace, complexity, from_dict, get, list_spaces, register
from .units import BLOCK, FIRST_BLOCK, HEAD, STEM, UNIT_FIELDS, units_of_arrays

__all__ = [
    "BLOCK",
    "FIRST_BLOCK",
    "HEAD",
    "STEM",
    "STEMS",
    "STEM_STRIDES",
    "UNIT_FIELDS",
    "Arch",
    "ArchArrays",
    "Block",
    "SearchSpace",
    "Stage",
    "complexity",
    "from_dict",
    "get",
    "list_spaces",
    "make_divisible",
    "register",
    "units_of_arrays",
]
