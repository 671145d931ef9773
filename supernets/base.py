"""The network skeleton shared by all families, static and weight-sharing.

Both have the same module names (``stem``, ``stages.<s>.<j>``, ``head``, ``classifier``) so that
extraction copies weights by walking the static model and fetching the module of the same
name in the supernet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from search_spaces import BLOCK, FIRST_BLOCK, HEAD, STEM, STEM_STRIDES, Arch, Block, SearchSpace

from .ops import ConvBN, DynamicBatchNorm2d, DynamicConv2d, DynamicConvBN, DynamicLinear

__all__ = [
    "Family",
    "StaticNet",
    "Supernet",
    "build_static",
    "build_supernet",
    "build_unit",
    "copy_weights",
    "recalibrate_bn",
    "register_family",
]


class Family:
    """What differs between families: blocks (static and dynamic), activation, stem."""

    name: str = ""
    activation: Callable[[], nn.Module] = nn.ReLU
    stem_kernel_imagenet: int = 3
    stem_pool_imagenet: bool = True

    @staticmethod
    def static_block(c_in: int, c_out: int, block: Block, stride: int, first: bool) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def dynamic_block(
        max_in: int,
        max_out: int,
        kernel_sizes: tuple[int, ...],
        expand_ratios: tuple[float, ...],
        stride: int,
        first: bool,
    ) -> nn.Module:
        raise NotImplementedError


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def family_of(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}: choose one of {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def _stem_geometry(family: Family, stem: str) -> tuple[int, int, nn.Module]:
    """(kernel size, stride, pooling module) of a family's stem."""
    if stem == "imagenet":
        pool = nn.MaxPool2d(3, 2, 1) if family.stem_pool_imagenet else nn.Identity()
        return family.stem_kernel_imagenet, STEM_STRIDES[stem], pool
    return 3, STEM_STRIDES[stem], nn.Identity()


class StaticNet(nn.Module):
    """A plain network of one architecture: no dynamic code, exportable with TorchScript."""

    def __init__(self, arch: Arch, num_classes: int) -> None:
        super().__init__()
        family = family_of(arch.family)
        self.arch_json = arch.to_json()
        kernel, stride, self.pool = _stem_geometry(family, arch.stem)
        self.stem = ConvBN(3, arch.stem_channels, kernel, stride)
        self.act = family.activation()
        stages, c_in = [], arch.stem_channels
        for stage in arch.stages:
            blocks = []
            for j, block in enumerate(stage.blocks):
                blocks.append(
                    family.static_block(
                        c_in, stage.channels, block, stage.stride if j == 0 else 1, j == 0
                    )
                )
                c_in = stage.channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBN(c_in, arch.head_channels, 1) if arch.head_channels else nn.Identity()
        self.head_act = family.activation() if arch.head_channels else nn.Identity()
        self.classifier = nn.Linear(arch.head_channels or c_in, num_classes)

    @property
    def arch(self) -> Arch:
        return Arch.from_json(self.arch_json)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input: globally pooled features, ``[N, classifier.in_features]``."""
        x = self.pool(self.act(self.stem(x)))
        return self.head_act(self.head(self.stages(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def drop_last_activation(self) -> None:
        """Remove the activation before global pooling (the head's, or the last block's
        output ReLU without a head), so the features can be negative: what a cosine
        classifier wants (LUCIR). In place; no weights change."""
        if self.arch.head_channels:
            self.head_act = nn.Identity()
            return
        last = self.stages[-1][-1]
        if not hasattr(last, "out_act"):
            raise ValueError(f"{self.arch.family} blocks have no output activation to remove")
        last.out_act = nn.Identity()


class Supernet(nn.Module):
    """Weight-sharing network over a search space.

    ``set_active(arch)`` chooses the subnet that ``forward`` computes; ``extract(arch)`` returns
    it as a :class:`StaticNet` with copied weights. The active architecture is plain instance
    state; nothing is shared between supernets.
    """

    def __init__(self, space: SearchSpace, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        family = family_of(space.family)
        self.space, self.num_classes = space, num_classes
        largest = space.largest()
        kernel, stride, self.pool = _stem_geometry(family, space.stem)
        self.stem_kernel = kernel
        self.stem = DynamicConvBN(3, largest.stem_channels, (kernel,), stride)
        self.act = family.activation()
        # Stages outside the encoding (MBConv's fixed first block) keep their own choices.
        fixed = len(largest.stages) - space.n_stages
        stages, max_in = [], largest.stem_channels
        for s, stage in enumerate(largest.stages):
            kernels = (
                tuple({b.kernel_size for b in stage.blocks}) if s < fixed else space.kernel_sizes
            )
            expands = (
                tuple({b.expand_ratio for b in stage.blocks})
                if s < fixed
                else space.expand_ratios or (1,)
            )
            blocks = []
            for j in range(stage.depth):
                blocks.append(
                    family.dynamic_block(
                        max_in,
                        stage.channels,
                        kernels,
                        expands,
                        stage.stride if j == 0 else 1,
                        j == 0,
                    )
                )
                max_in = stage.channels
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.head = (
            DynamicConvBN(max_in, largest.head_channels, (1,)) if largest.head_channels else None
        )
        self.classifier = DynamicLinear(largest.head_channels or max_in, num_classes)
        self.active = largest

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (transfer to another
        task); every other weight is kept."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        device = self.classifier.weight.device
        self.classifier = DynamicLinear(self.classifier.weight.shape[1], num_classes).to(device)
        self.num_classes = num_classes

    @torch.no_grad()
    def zero_init_residual(self) -> None:
        """BigNAS's initialisation: the last BatchNorm γ of every residual branch set to zero,
        so each block starts as its shortcut. A subnet's extra blocks then begin by changing
        nothing, and deep and shallow subnets start out computing the same function.
        ShuffleNetV2 units concatenate rather than add, and are left as they are."""
        for stage in self.stages:
            for block in stage:
                bn = block.residual_bn() if hasattr(block, "residual_bn") else None
                if bn is not None:
                    bn.weight.zero_()

    def sync_batch_norm(self, synced: bool = True) -> None:
        """With ``synced``, every BatchNorm of this supernet sums its training statistics over
        the processes of ``torch.distributed``'s default group (data-parallel training, where
        each process holds a share of one batch): the result is the single process's."""
        for module in self.modules():
            if isinstance(module, DynamicBatchNorm2d):
                module.synced = synced

    def sort_channels(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """OFA's channel sorting before width shrinks, in every block with hidden channels of
        its own (MBConv's expansion; the other families' widths are their stages' and are left
        as they are). Returns what moved: (tensor, dim, order), for the optimiser's state."""
        return [
            moved
            for stage in self.stages
            for block in stage
            if hasattr(block, "sort_hidden_channels")
            for moved in block.sort_hidden_channels()
        ]

    def set_active(self, arch: Arch) -> None:
        """Make ``arch`` the subnet that ``forward`` computes (checked against the space)."""
        self.space.encode(arch)
        self.active = arch

    def get_active(self) -> Arch:
        return self.active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.active
        x = self.pool(self.act(self.stem(x, arch.stem_channels, self.stem_kernel)))
        for s, stage in enumerate(arch.stages):
            for j, block in enumerate(stage.blocks):
                x = self.stages[s][j](x, stage.channels, block)
        if self.head is not None:
            x = self.act(self.head(x, arch.head_channels, 1))
        return self.classifier(x.mean((2, 3)))

    def extract(self, arch: Arch | None = None) -> StaticNet:
        """A static model of ``arch`` (default: the active one) with the supernet's weights,
        including BatchNorm statistics; in the supernet's train/eval mode."""
        arch = self.active if arch is None else arch
        self.space.encode(arch)
        model = StaticNet(arch, self.num_classes)
        copy_weights(self, model)
        return model.train(self.training)


@torch.no_grad()
def copy_weights(supernet: Supernet, model: StaticNet) -> None:
    """Copy the supernet's weights into every layer of ``model`` (same module names)."""
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            continue
        source = supernet.get_submodule(name)
        if isinstance(layer, nn.Conv2d):
            assert isinstance(source, DynamicConv2d), name
            layer.weight.copy_(
                source.active_weight(layer.in_channels, layer.out_channels, layer.kernel_size[0])
            )
        elif isinstance(layer, nn.BatchNorm2d):
            assert isinstance(source, DynamicBatchNorm2d), name
            c = layer.num_features
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(layer, attr).copy_(getattr(source, attr)[:c])
            layer.num_batches_tracked.copy_(source.num_batches_tracked)
        else:
            assert isinstance(source, DynamicLinear), name
            layer.weight.copy_(source.weight[:, : layer.in_features])
            layer.bias.copy_(source.bias)


def build_static(arch: Arch, num_classes: int) -> StaticNet:
    """A freshly initialised static model of ``arch`` (for training from scratch)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return StaticNet(arch, num_classes)


def build_supernet(space: SearchSpace, num_classes: int) -> Supernet:
    """A freshly initialised supernet over ``space``."""
    return Supernet(space, num_classes)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 20) -> None:
    """Recompute BatchNorm running statistics as the plain mean over ``batches`` training
    batches of ``loader`` (images first in each item, already at the model's resolution).
    Inherited statistics belong to other subnets: OFA's subnets score near chance without
    this. Restores the train/eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    device = next(model.parameters()).device
    seen = 0
    for images, *_ in loader:
        if seen >= batches:
            break
        model(images.to(device))
        seen += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn got an empty loader: BatchNorm statistics were not set")


class Head(nn.Module):
    """A head unit: optional 1x1 ConvBN and activation, global pooling, linear classifier."""

    def __init__(self, c_in: int, head_channels: int, num_classes: int, activation) -> None:
        super().__init__()
        self.head = ConvBN(c_in, head_channels, 1) if head_channels else nn.Identity()
        self.act = activation() if head_channels else nn.Identity()
        self.classifier = nn.Linear(head_channels or c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.head(x)).mean((2, 3)))


def build_unit(family: str, stem: str, row: Iterable[int]) -> tuple[nn.Module, tuple[int, ...]]:
    """A freshly initialised static module computing one unit of a network, in eval mode, and
    its input shape at batch 1. ``row``: the unit's integers in ``search_spaces.UNIT_FIELDS``
    order. The layers are the ones :class:`StaticNet` builds, so a unit runs as it does there."""
    fam = family_of(family)
    kind, c_in, c_out, kernel, expand_pct, stride, size, classes = (int(v) for v in row)
    if kind == STEM:
        stem_kernel, stem_stride, pool = _stem_geometry(fam, stem)
        module = nn.Sequential(ConvBN(3, c_out, stem_kernel, stem_stride), fam.activation(), pool)
    elif kind in (FIRST_BLOCK, BLOCK):
        expand = expand_pct / 100
        block = Block(kernel, int(expand) if expand.is_integer() else expand)
        module = fam.static_block(c_in, c_out, block, stride, kind == FIRST_BLOCK)
    elif kind == HEAD:
        module = Head(c_in, c_out, classes, fam.activation)
    else:
        raise ValueError(f"unknown unit kind {kind}: a row of search_spaces.UNIT_FIELDS")
    return module.eval(), (1, c_in, size, size)
