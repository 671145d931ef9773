"""Multi-exit networks: a static network with extra classifiers (exits) after chosen stages.

Each exit is the family's own head shape: a 1x1 ConvBN and activation, global average
pooling, a linear classifier. The 1x1 convolution comes before pooling because an early
stage's features are few and local: mixing them at every position into a wider map first
lets the pooled vector carry more than a linear map of the stage's own channel means (MSDNet
puts convolutions before its exits' pooling for the same reason; one 1x1 convolution keeps
the exit cheap next to the stages it follows). The last exit is the network's own head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from search_spaces import Arch

from .base import Head, StaticNet, family_of

__all__ = ["MultiExitNet", "check_exits", "default_exit_channels"]

EXIT_WIDTH = 4  # an exit's 1x1 convolution widens its stage's channels this many times


def check_exits(arch: Arch, exits: Sequence[int]) -> tuple[int, ...]:
    """``exits`` (stage indices, 0-based) sorted and checked: each must be a stage of
    ``arch`` before the last, whose end is the network's own classifier."""
    last = len(arch.stages) - 1
    if last < 1:
        raise ValueError(
            "a one-stage architecture has no stage before its classifier to put an exit after"
        )
    chosen = tuple(sorted({int(k) for k in exits}))
    bad = [k for k in chosen if not 0 <= k < last]
    if bad:
        raise ValueError(
            f"no stage {bad[0]} to put an exit after: this {arch.family} architecture has "
            f"{last + 1} stages, so exits go after stages 0 to {last - 1} (stage {last} ends "
            "in the network's own classifier)"
        )
    if not chosen:
        raise ValueError("give at least one stage to put an exit after")
    return chosen


def default_exit_channels(arch: Arch, exits: Sequence[int]) -> tuple[int, ...]:
    """The width of each exit's 1x1 convolution: :data:`EXIT_WIDTH` times its stage's
    channels, never wider than the network's own head."""
    head = arch.head_channels or EXIT_WIDTH * arch.stages[-1].channels
    return tuple(min(head, EXIT_WIDTH * arch.stages[k].channels) for k in exits)


class MultiExitNet(nn.Module):
    """``net`` with an exit after each stage in ``exits``; ``forward`` returns every exit's
    logits, the network's own classifier last. ``net``'s modules are used as they are (its
    weights are the backbone's)."""

    def __init__(
        self,
        net: StaticNet,
        exits: Sequence[int],
        exit_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        arch = net.arch
        self.exit_stages = check_exits(arch, exits)
        if exit_channels is None:
            exit_channels = default_exit_channels(arch, self.exit_stages)
        channels = tuple(int(c) for c in exit_channels)
        if len(channels) != len(self.exit_stages) or min(channels, default=0) < 1:
            raise ValueError(
                f"exit_channels must give a positive width for each of the "
                f"{len(self.exit_stages)} exits, got {list(channels)}"
            )
        self.exit_channels = channels
        self.net = net
        activation = family_of(arch.family).activation
        classes = net.classifier.out_features
        self.exits = nn.ModuleList(
            Head(arch.stages[k].channels, c, classes, activation)
            for k, c in zip(self.exit_stages, channels, strict=True)
        ).to(net.classifier.weight.device)

    @property
    def num_exits(self) -> int:
        """Exits including the network's own classifier."""
        return len(self.exit_stages) + 1

    def forward(self, x: torch.Tensor, upto: int | None = None) -> tuple[torch.Tensor, ...]:
        """Logits ``[N, classes]`` of every exit, in order; ``upto``: stop after that exit
        (0-based), computing only what it needs."""
        last = self.num_exits - 1 if upto is None else upto
        if not 0 <= last < self.num_exits:
            raise ValueError(f"upto must be an exit, 0 to {self.num_exits - 1}, got {upto}")
        net, outputs = self.net, []
        x = net.pool(net.act(net.stem(x)))
        heads = dict(zip(self.exit_stages, self.exits, strict=True))
        for s, stage in enumerate(net.stages):
            x = stage(x)
            if s in heads:
                outputs.append(heads[s](x))
                if len(outputs) > last:
                    return tuple(outputs)
        outputs.append(net.classifier(net.head_act(net.head(x)).mean((2, 3))))
        return tuple(outputs)
