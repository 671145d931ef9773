"""ShuffleNetV2 units, static and weight-sharing.

A stage's first unit sends the whole input through two branches (and applies the stride);
the others split the channels in half, transform one half and shuffle.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Block

from .base import Family, register_family
from .ops import ConvBN, DynamicConvBN, channel_shuffle

__all__ = ["DynamicShuffleUnit", "ShuffleUnit"]


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, block: Block, stride: int, first: bool) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"ShuffleNetV2 needs an even channel count, got {c_out}")
        if not first and c_in != c_out:
            raise ValueError("only a stage's first ShuffleNetV2 unit can change channels")
        k, half = block.kernel_size, c_out // 2
        self.first = first
        if first:
            self.branch1_dw = ConvBN(c_in, c_in, k, stride, depthwise=True)
            self.branch1_pw = ConvBN(c_in, half, 1)
        branch_in = c_in if first else half
        self.branch2_pw1 = ConvBN(branch_in, half, 1)
        self.branch2_dw = ConvBN(half, half, k, stride, depthwise=True)
        self.branch2_pw2 = ConvBN(half, half, 1)
        self.act = nn.ReLU()

    def _branch2(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch2_pw2(self.branch2_dw(self.act(self.branch2_pw1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            out = torch.cat([self.act(self.branch1_pw(self.branch1_dw(x))), self._branch2(x)], 1)
        else:
            keep, change = x.chunk(2, dim=1)
            out = torch.cat([keep, self._branch2(change)], 1)
        return channel_shuffle(out)


class DynamicShuffleUnit(nn.Module):
    def __init__(
        self, max_in: int, max_out: int, kernel_sizes: tuple[int, ...], stride: int, first: bool
    ) -> None:
        super().__init__()
        half = max_out // 2
        self.first = first
        if first:
            self.branch1_dw = DynamicConvBN(max_in, max_in, kernel_sizes, stride, depthwise=True)
            self.branch1_pw = DynamicConvBN(max_in, half, (1,))
        self.branch2_pw1 = DynamicConvBN(max_in if first else half, half, (1,))
        self.branch2_dw = DynamicConvBN(half, half, kernel_sizes, stride, depthwise=True)
        self.branch2_pw2 = DynamicConvBN(half, half, (1,))
        self.act = nn.ReLU()

    def _branch2(self, x: torch.Tensor, half: int, k: int) -> torch.Tensor:
        h = self.act(self.branch2_pw1(x, half, 1))
        return self.act(self.branch2_pw2(self.branch2_dw(h, half, k), half, 1))

    def forward(self, x: torch.Tensor, c_out: int, block: Block) -> torch.Tensor:
        k, half = block.kernel_size, c_out // 2
        if self.first:
            left = self.act(self.branch1_pw(self.branch1_dw(x, x.shape[1], k), half, 1))
            out = torch.cat([left, self._branch2(x, half, k)], 1)
        else:
            keep, change = x.chunk(2, dim=1)
            out = torch.cat([keep, self._branch2(change, half, k)], 1)
        return channel_shuffle(out)


@register_family
class ShuffleNetV2Family(Family):
    name = "shufflenetv2"
    activation = nn.ReLU

    @staticmethod
    def static_block(c_in, c_out, block, stride, first):
        return ShuffleUnit(c_in, c_out, block, stride, first)

    @staticmethod
    def dynamic_block(max_in, max_out, kernel_sizes, expand_ratios, stride, first):
        return DynamicShuffleUnit(max_in, max_out, kernel_sizes, stride, first)
