"""MBConv (MobileNetV2 inverted residual) blocks, static and weight-sharing."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import Block

from .base import Family, register_family
from .ops import ConvBN, DynamicConvBN

__all__ = ["DynamicMBConv", "MBConv"]


class MBConv(nn.Module):
    """1x1 expansion (skipped for expand ratio 1), depthwise k x k, linear 1x1 projection;
    a residual connection when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, block: Block, stride: int) -> None:
        super().__init__()
        hidden = round(c_in * block.expand_ratio)
        self.expand = ConvBN(c_in, hidden, 1) if block.expand_ratio != 1 else nn.Identity()
        self.expand_act = nn.ReLU6() if block.expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, block.kernel_size, stride, depthwise=True)
        self.project = ConvBN(hidden, c_out, 1)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.act(self.depthwise(self.expand_act(self.expand(x)))))
        return x + h if self.residual else h


class DynamicMBConv(nn.Module):
    """MBConv over the largest channels, expand ratio and kernel of its slot."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: tuple[int, ...],
        expand_ratios: tuple[float, ...],
        stride: int,
        first: bool = False,
    ) -> None:
        super().__init__()
        hidden = round(max_in * max(expand_ratios))
        self.expand = (
            DynamicConvBN(max_in, hidden, (1,)) if any(e != 1 for e in expand_ratios) else None
        )
        self.depthwise = DynamicConvBN(hidden, hidden, kernel_sizes, stride, depthwise=True)
        self.project = DynamicConvBN(hidden, max_out, (1,))
        self.act = nn.ReLU6()
        self.stride = stride
        self.first = first

    def residual_bn(self) -> nn.Module | None:
        """The last BatchNorm of the residual branch: only a stage's later blocks always keep
        their shape (and so their shortcut) in every subnet."""
        return None if self.first else self.project.bn

    @torch.no_grad()
    def sort_hidden_channels(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """OFA's channel sorting: reorder the hidden channels by importance, the L1 norm of
        the projection's weights that read each, so a smaller expand ratio keeps the most
        important. The block computes the same function with all of them. Returns (tensor,
        dim, order) for every parameter and buffer reordered, for an optimiser to follow."""
        if self.expand is None:  # the hidden channels are the block's input
            return []
        weight = self.project.conv.weight
        order = weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
        moved = [(weight, 1, order)]
        for conv_bn in (self.expand, self.depthwise):
            bn = conv_bn.bn
            for tensor in (
                *conv_bn.conv.kernel_parameters(),
                bn.weight,
                bn.bias,
                bn.running_mean,
                bn.running_var,
            ):
                moved.append((tensor, 0, order))
        for tensor, dim, index in moved:
            tensor.copy_(tensor.index_select(dim, index))
        return moved

    def forward(self, x: torch.Tensor, c_out: int, block: Block) -> torch.Tensor:
        c_in = x.shape[1]
        h = x
        if block.expand_ratio != 1:
            h = self.act(self.expand(x, round(c_in * block.expand_ratio), 1))
        h = self.act(self.depthwise(h, h.shape[1], block.kernel_size))
        h = self.project(h, c_out, 1)
        return x + h if self.stride == 1 and c_in == c_out else h


@register_family
class MBv2Family(Family):
    name = "mbv2"
    activation = nn.ReLU6
    stem_pool_imagenet = False

    @staticmethod
    def static_block(c_in, c_out, block, stride, first):
        return MBConv(c_in, c_out, block, stride)

    @staticmethod
    def dynamic_block(max_in, max_out, kernel_sizes, expand_ratios, stride, first):
        return DynamicMBConv(max_in, max_out, kernel_sizes, expand_ratios, stride, first)
