"""Static layers and their weight-sharing (dynamic) counterparts.

A dynamic layer holds the largest weight and computes with a slice of it: the first
``c_out`` filters, the first ``c_in`` input channels, and for a smaller kernel the centre crop
passed through a learned transform (OFA's elastic kernel: one matrix per kernel size, shared
by all channels, initialised to identity). The largest kernel is stored as its centre and
rings, so that a smaller kernel touches only the parameters inside it. ``active_weight`` is
the one place that slicing is written; both the forward pass and extraction into a static
layer call it, so an extracted model computes exactly what the supernet computed.

Dynamic layers take their active sizes as arguments: no state is stored on them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvBN",
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicConvBN",
    "DynamicLinear",
    "channel_shuffle",
]


class ConvBN(nn.Module):
    """Bias-free convolution ('same' padding) followed by BatchNorm; no activation."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, depthwise: bool = False
    ) -> None:
        super().__init__()
        if depthwise and c_in != c_out:
            raise ValueError(f"a depthwise convolution keeps its channels: {c_in} != {c_out}")
        self.conv = nn.Conv2d(
            c_in,
            c_out,
            kernel_size,
            stride,
            kernel_size // 2,
            groups=c_in if depthwise else 1,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DynamicConv2d(nn.Module):
    """Convolution whose output channels, input channels and kernel size are chosen per call.

    The largest kernel is stored as the smallest kernel's centre (``weight``) and one ring of
    four strips per larger size (``rings``; ``top`` and ``bottom`` span the ring's whole width,
    ``left`` and ``right`` the rows between). Together they are OFA's one largest weight, but
    a subnet with a smaller kernel reads and gets gradients for only the parameters inside it:
    a 3x3 convolution of a {3, 5} layer no longer back-propagates zeros into, and steps the
    optimiser over, a 5x5 tensor (the ResNet supernet trained at 0.61 of torchvision's speed
    when it did). State dicts holding the whole largest weight, as saved before, still load.
    """

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: Sequence[int],
        stride: int = 1,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.stride, self.depthwise = stride, depthwise
        k = self.kernel_sizes[-1]
        full = torch.empty(max_out, 1 if depthwise else max_in, k, k)
        nn.init.kaiming_normal_(full, mode="fan_out")
        core, rings = self._split(full)
        self.weight = nn.Parameter(core)
        self.rings = nn.ParameterDict({name: nn.Parameter(t) for name, t in rings.items()})
        # transform[str(k)] maps the centre crop of the next larger kernel to size k.
        self.transform = nn.ParameterDict(
            {str(s): nn.Parameter(torch.eye(s * s)) for s in self.kernel_sizes[:-1]}
        )
        # The last weight computed without autograd: evaluating one subnet over many batches
        # then slices and transforms once. Keyed on the parameters' versions, which every
        # in-place update (optimiser step, load_state_dict) bumps; writes through ``.data``
        # bypass versions, so use ``torch.no_grad()`` and the parameter itself instead.
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.register_load_state_dict_pre_hook(DynamicConv2d._split_whole_weight)

    def _split(self, full: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The smallest kernel's centre and the rings of a whole largest weight."""
        rings = {}
        for inner, size in reversed(list(itertools.pairwise(self.kernel_sizes))):
            d = (size - inner) // 2
            rings[f"{size}_top"] = full[..., :d, :].clone()
            rings[f"{size}_bottom"] = full[..., size - d :, :].clone()
            rings[f"{size}_left"] = full[..., d : size - d, :d].clone()
            rings[f"{size}_right"] = full[..., d : size - d, size - d :].clone()
            full = full[..., d : size - d, d : size - d]
        return full.clone(), rings

    def _split_whole_weight(self, state_dict: dict, prefix: str, *args) -> None:
        # A load hook (called with the module first): cut a whole largest weight into rings.
        weight = state_dict.get(prefix + "weight")
        largest = self.kernel_sizes[-1]
        if weight is not None and len(self.kernel_sizes) > 1 and weight.shape[-1] == largest:
            core, rings = self._split(weight)
            state_dict[prefix + "weight"] = core
            state_dict.update({f"{prefix}rings.{name}": t for name, t in rings.items()})

    def kernel_parameters(self) -> list[nn.Parameter]:
        """Every parameter holding filters (output channels on dim 0, input on dim 1)."""
        return [self.weight, *self.rings.values()]

    def _versions(self) -> tuple:
        return tuple(p._version for p in (*self.kernel_parameters(), *self.transform.values()))

    def active_weight(self, c_in: int, c_out: int, kernel_size: int) -> torch.Tensor:
        """Weight of shape (c_out, c_in or 1, kernel_size, kernel_size)."""
        if torch.is_grad_enabled():
            return self._compute_weight(c_in, c_out, kernel_size)
        key = (c_in, c_out, kernel_size, self.weight.device, *self._versions())
        if self._cache is None or self._cache[0] != key:
            weight = self._compute_weight(c_in, c_out, kernel_size).contiguous()
            self._cache = (key, weight)
        return self._cache[1]

    def _compute_weight(self, c_in: int, c_out: int, kernel_size: int) -> torch.Tensor:
        sizes = self.kernel_sizes
        if kernel_size not in sizes:
            raise ValueError(f"kernel size {kernel_size} is not one of {sizes}")

        def active(t: torch.Tensor) -> torch.Tensor:
            return t[:c_out] if self.depthwise else t[:c_out, :c_in]

        # The raw region a smaller kernel starts from is the centre of the largest weight
        # one size down: the ring of the largest size is not read.
        raw = sizes[-1] if kernel_size == sizes[-1] else sizes[-2]
        weight = active(self.weight)
        for size in sizes[1:]:
            if size > raw:
                break
            ring = {side: active(self.rings[f"{size}_{side}"]) for side in _SIDES}
            middle = torch.cat((ring["left"], weight, ring["right"]), dim=-1)
            weight = torch.cat((ring["top"], middle, ring["bottom"]), dim=-2)
        if kernel_size == sizes[-1]:
            return weight
        for size in reversed(sizes[:-1]):
            if size < kernel_size:
                break
            start = (weight.shape[-1] - size) // 2
            crop = weight[:, :, start : start + size, start : start + size]
            weight = (crop.reshape(-1, size * size) @ self.transform[str(size)]).reshape(crop.shape)
        return weight

    def forward(self, x: torch.Tensor, c_out: int, kernel_size: int) -> torch.Tensor:
        c_in = x.shape[1]
        if self.depthwise:
            c_out = c_in
        weight = self.active_weight(c_in, c_out, kernel_size)
        return F.conv2d(
            x, weight, None, self.stride, kernel_size // 2, 1, c_in if self.depthwise else 1
        )


_SIDES = ("top", "bottom", "left", "right")


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its input; running statistics are updated in
    place in the slices, with the same momentum rule as ``nn.BatchNorm2d``.

    ``synced`` (set by :meth:`supernets.Supernet.sync_batch_norm`): in training, the batch
    statistics are summed over every process of ``torch.distributed``'s default group, so that
    data-parallel workers, each holding a share of one batch, normalise as one process holding
    the whole batch would (SyncBatchNorm, for the sliced channels)."""

    synced = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features and not (self.synced and self.training):
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        if self.synced and self.training:
            return self._synced_forward(x, factor)
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            use_batch_stats,
            factor,
            self.eps,
        )

    def _synced_forward(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        c = x.shape[1]
        # Each process's mean and squared deviations, gathered in one collective (a step
        # makes hundreds, each a round trip) and pooled as Chan et al.'s parallel variance,
        # as SyncBatchNorm does: E[x^2] - E[x]^2 would lose the variance of activations whose
        # mean is large against their spread.
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        count = x.numel() / c
        gathered = _all_gather(torch.cat([mean, var * count, mean.new_full((1,), count)]))
        counts, means, squares = gathered[:, -1:], gathered[:, :c], gathered[:, c : 2 * c]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (squares.sum(0) + (counts * (means - mean) ** 2).sum(0)) / total
        if factor:
            with torch.no_grad():
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean[:c].mul_(1 - factor).add_(factor * mean)
                self.running_var[:c].mul_(1 - factor).add_(factor * unbiased)
        scale = self.weight[:c] * torch.rsqrt(var + self.eps)
        bias = self.bias[:c] - mean * scale
        return x * scale.view(1, c, 1, 1) + bias.view(1, c, 1, 1)


class _AllGather(torch.autograd.Function):
    """Every process's ``tensor``, stacked, over ``torch.distributed``'s default group, with
    gradients: each process's piece gets the sum of every process's gradient for it."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        ctx.rank = dist.get_rank()
        return torch.stack(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rank]


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    return _AllGather.apply(tensor)


class DynamicConvBN(nn.Module):
    """:class:`DynamicConv2d` followed by :class:`DynamicBatchNorm2d` (names match ConvBN)."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_sizes: Sequence[int],
        stride: int = 1,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        self.conv = DynamicConv2d(max_in, max_out, kernel_sizes, stride, depthwise)
        self.bn = DynamicBatchNorm2d(max_out)

    def forward(self, x: torch.Tensor, c_out: int, kernel_size: int) -> torch.Tensor:
        return self.bn(self.conv(x, c_out, kernel_size))


class DynamicLinear(nn.Module):
    """Linear layer over the first ``c_in`` input features; the outputs are fixed."""

    def __init__(self, max_in: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, max_in))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
