"""ResNet basic blocks, static and weight-sharing."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Block

from .base import Family, register_family
from .ops import ConvBN, DynamicConvBN

__all__ = ["BasicBlock", "DynamicBasicBlock"]


class BasicBlock(nn.Module):
    """Two k x k convolutions; a 1x1 projection shortcut when stride or channels change."""

    def __init__(self, c_in: int, c_out: int, block: Block, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, block.kernel_size, stride)
        self.conv2 = ConvBN(c_out, c_out, block.kernel_size)
        self.shortcut = (
            ConvBN(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.act = nn.ReLU()
        self.out_act = nn.ReLU()  # its own module, so that the last one can be removed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class DynamicBasicBlock(nn.Module):
    """Basic block over the largest channels and kernel of its slot."""

    def __init__(
        self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...], stride: int, first: bool
    ) -> None:
        super().__init__()
        self.conv1 = DynamicConvBN(max_in, max_out, kernel_sizes, stride)
        self.conv2 = DynamicConvBN(max_out, max_out, kernel_sizes)
        # Only a stage's first block can change channels or stride.
        self.shortcut = DynamicConvBN(max_in, max_out, (1,), stride) if first else None
        self.act = nn.ReLU()
        self.stride = stride

    def residual_bn(self) -> nn.Module:
        """The last BatchNorm of the residual branch (every block has a shortcut)."""
        return self.conv2.bn

    def forward(self, x: torch.Tensor, c_out: int, block: Block) -> torch.Tensor:
        h = self.conv2(self.act(self.conv1(x, c_out, block.kernel_size)), c_out, block.kernel_size)
        if self.stride != 1 or x.shape[1] != c_out:
            x = self.shortcut(x, c_out, 1)
        return self.act(h + x)


@register_family
class ResNetFamily(Family):
    name = "resnet"
    activation = nn.ReLU
    stem_kernel_imagenet = 7

    @staticmethod
    def static_block(c_in, c_out, block, stride, first):
        return BasicBlock(c_in, c_out, block, stride)

    @staticmethod
    def dynamic_block(max_in, max_out, kernel_sizes, expand_ratios, stride, first):
        return DynamicBasicBlock(max_in, max_out, kernel_sizes, stride, first)
