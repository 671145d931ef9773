"""Weight-sharing supernets for the search spaces, static models and subnet extraction."""

from . import mbv2, resnet, shufflenetv2  # noqa: F401  (fill the family registry)
from .base import StaticNet, Supernet, build_static, build_supernet, copy_weights, recalibrate_bn

__all__ = [
    "StaticNet",
    "Supernet",
    "build_static",
    "build_supernet",
    "copy_weights",
    "recalibrate_bn",
]
