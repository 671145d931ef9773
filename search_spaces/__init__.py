"""Search spaces: integer encodings of architectures, sampling, repair and analytic
parameter / MAC counts. Numpy only; nothing here imports torch."""

from . import mbv2, resnet, shufflenetv2  # noqa: F401  (fill the registry)
from .arch import STEM_STRIDES, STEMS, Arch, ArchArrays, Block, Stage, make_divisible
from .base import SearchSpace, complexity, from_dict, get, list_spaces, register

__all__ = [
    "STEMS",
    "STEM_STRIDES",
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
]
