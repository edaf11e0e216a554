"""Residual nets: CIFAR ResNets, Wide ResNet, torchvision ResNet-18/34.

- ``resnet8 … resnet110``: He et al. 2016 (Deep Residual Learning, §4.2 CIFAR-10): a 3×3 stem,
  three groups of n basic blocks with 16/32/64 channels × ``width``, depth = 6n + 2. Shortcuts
  are option B (1×1 conv + BN projection where the shape changes), so every channel of a
  wider copy is a real channel and ``widen`` can copy weights slice by slice.
- ``wrn``: Zagoruyko & Komodakis 2016 (Wide Residual Networks): pre-activation blocks,
  groups of 16k/32k/64k channels, depth = 6n + 4, WRN-16-2 by default.
- ``resnet18`` / ``resnet34``: torchvision's ResNet (its ``BasicBlock`` and init), 64…512
  channels × ``width``, no pretrained weights.

Every residual stage is one group and every residual block one block.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1, conv3x3

from kdtune.models._base import TappedModel, can_halve, scaled
from kdtune.registry import MODELS


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _basic_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's ``_make_layer`` for BasicBlock: projection (option B) on shape change."""
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(in_planes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(TappedModel):
    """Stem → stages of BasicBlocks (stride 2 from the second stage on) → GAP → fc.

    ``stem`` is built by the caller (CIFAR 3×3 or ImageNet 7×7 + max-pool); a stride-2 stage
    keeps stride 1 when its input map is already 1×1 (``stem_size`` = the stem's output side).
    """

    def __init__(self, num_classes: int, stem: nn.Module, stem_channels: int, stem_size: int,
                 planes: list[int], blocks: list[int]) -> None:
        super().__init__()
        self.stem = stem
        groups, size, cin = [], stem_size, stem_channels
        for k, (p, n) in enumerate(zip(planes, blocks)):
            stride = 2 if k > 0 and can_halve(size) else 1
            size = (size + 1) // 2 if stride == 2 else size  # 3×3 conv, pad 1, stride 2
            groups.append(_basic_stage(cin, p, n, stride))
            cin = p
        self.groups = nn.ModuleList(groups)
        self.fc = nn.Linear(cin, num_classes)
        _init_like_torchvision(self)


def cifar_resnet(num_classes: int, in_channels: int, input_size: int, depth: int,
                 width: float = 1.0) -> ResNet:
    """CIFAR ResNet-``depth`` (depth = 6n + 2), channels 16/32/64 × ``width``."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
    n = (depth - 2) // 6
    c0 = scaled(16, width)
    stem = nn.Sequential(conv3x3(in_channels, c0), nn.BatchNorm2d(c0), nn.ReLU())
    planes = [scaled(c, width) for c in (16, 32, 64)]
    return ResNet(num_classes, stem, c0, input_size, planes, [n, n, n])


def _register_cifar(depth: int) -> None:
    def factory(num_classes: int, in_channels: int, input_size: int,
                width: float = 1.0) -> ResNet:
        return cifar_resnet(num_classes, in_channels, input_size, depth, width)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), 16/32/64 channels × ``width``."
    MODELS.register(f"resnet{depth}", factory)


for _depth in (8, 14, 20, 26, 32, 56, 110):
    _register_cifar(_depth)


# --- Wide ResNet ------------------------------------------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation basic block (BN → ReLU → conv, twice); 1×1 projection on shape change,
    applied to the pre-activated input as in the WRN reference code."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.project = stride != 1 or in_planes != planes  # fixed at build: export-safe
        self.shortcut = conv1x1(in_planes, planes, stride) if self.project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (self.shortcut(o) if self.project else x)


class WideResNet(TappedModel):
    """WRN-depth-k: 3×3 stem, three groups of WideBlocks, final BN → ReLU before the GAP."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, depth: int,
                 widen_factor: float, width: float) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {depth!r}")
        if not widen_factor > 0:
            raise ValueError(f"widen_factor must be > 0 (got {widen_factor!r})")
        n = (depth - 4) // 6
        c0 = scaled(16, width)
        self.stem = nn.Conv2d(in_channels, c0, 3, padding=1, bias=False)
        groups, size, cin = [], input_size, c0
        for k, c in enumerate((16, 32, 64)):
            planes = scaled(c, widen_factor * width)
            stride = 2 if k > 0 and can_halve(size) else 1
            size = (size + 1) // 2 if stride == 2 else size
            blocks = [WideBlock(cin if i == 0 else planes, planes, stride if i == 0 else 1)
                      for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            cin = planes
        self.groups = nn.ModuleList(groups)
        # Pre-activation nets end un-normalised; the reference code applies BN → ReLU here.
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.fc = nn.Linear(cin, num_classes)
        _init_like_torchvision(self)

    def embed(self, h: Tensor) -> Tensor:
        return super().embed(self.final(h))


@MODELS.register("wrn")
def wrn(num_classes: int, in_channels: int, input_size: int, depth: int = 16,
        widen_factor: float = 2, width: float = 1.0) -> WideResNet:
    """Wide ResNet-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016), × ``width``."""
    return WideResNet(num_classes, in_channels, input_size, depth, widen_factor, width)


# --- torchvision ResNet-18 / 34 ---------------------------------------------------------------


def torchvision_resnet(num_classes: int, in_channels: int, input_size: int,
                       blocks: list[int], width: float = 1.0) -> ResNet:
    """torchvision's ResNet with BasicBlocks (He et al. 2016, ImageNet layout).

    The stem is torchvision's ``conv1/bn1/relu/maxpool`` (named so inside ``stem``), groups are
    ``layer1..layer4``. For small inputs (``input_size < 64``) conv1 is a 3×3 stride-1 conv and
    the max-pool is dropped, the usual CIFAR adaptation: the 7×7/2 conv + pool would shrink a
    32×32 image to 8×8 before the first block.
    """
    c0 = scaled(64, width)
    small = input_size < 64
    if small:
        conv1: nn.Module = nn.Conv2d(in_channels, c0, 3, stride=1, padding=1, bias=False)
        maxpool: nn.Module = nn.Identity()
        stem_size = input_size
    else:
        conv1 = nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False)
        maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stem_size = ((input_size + 1) // 2 + 1) // 2
    stem = nn.Sequential(OrderedDict(conv1=conv1, bn1=nn.BatchNorm2d(c0), relu=nn.ReLU(),
                                     maxpool=maxpool))
    planes = [scaled(c, width) for c in (64, 128, 256, 512)]
    return ResNet(num_classes, stem, c0, stem_size, planes, blocks)


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int, input_size: int,
             width: float = 1.0) -> ResNet:
    """torchvision ResNet-18 (see ``torchvision_resnet``; 3×3 stem, no max-pool below 64 px)."""
    return torchvision_resnet(num_classes, in_channels, input_size, [2, 2, 2, 2], width)


@MODELS.register("resnet34")
def resnet34(num_classes: int, in_channels: int, input_size: int,
             width: float = 1.0) -> ResNet:
    """torchvision ResNet-34 (see ``torchvision_resnet``; 3×3 stem, no max-pool below 64 px)."""
    return torchvision_resnet(num_classes, in_channels, input_size, [3, 4, 6, 3], width)


def from_torchvision(state_dict: dict) -> dict:
    """Rename a torchvision ResNet state dict (``conv1.*``, ``layer1.*``, ``fc.*``) to this
    module's names (``stem.conv1.*``, ``groups.0.*``, ``fc.*``), e.g. to load ImageNet weights
    into ``resnet18`` / ``resnet34`` built with ``input_size >= 64``."""
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head in ("conv1", "bn1"):
            key = f"stem.{key}"
        elif head.startswith("layer"):
            key = f"groups.{int(head[5:]) - 1}.{rest}"
        out[key] = value
    return out
