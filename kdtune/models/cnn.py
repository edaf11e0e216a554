"""Small plain models: ``mlp``, ``cnn_small`` and ``cnn4``.

``cnn4`` stands in for the "small 4 layered convolutional network" teacher that Knowledge
Factorization (Dhar et al.) trains on MNIST; ``cnn_small`` is the 2-conv student of the same
family; ``mlp`` is the fully connected net anti-distillation (Petrushina et al.) widens.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdtune.models._base import ConvBNAct, TappedModel, can_halve, scaled
from kdtune.registry import MODELS


class LinearAct(nn.Module):
    """One MLP layer as a block: Linear → ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.linear(x))


class MLP(TappedModel):
    """Flatten → (Linear → ReLU) per hidden size → fc. Each hidden layer is one group."""

    def __init__(self, num_classes: int, in_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must list at least one layer size, e.g. [256, 128]")
        self.stem = nn.Flatten()  # (C, H, W) flattened channel-major: extra channels append
        sizes = [in_features, *hidden]
        self.groups = nn.ModuleList(LinearAct(a, b) for a, b in zip(sizes, sizes[1:]))
        self.fc = nn.Linear(sizes[-1], num_classes)


class PlainCNN(TappedModel):
    """Conv layers (3×3 conv → BN → ReLU), a 2×2 max-pool before every layer but the first,
    then global average pool → fc. Each conv layer is one group (and one block)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int,
                 channels: Sequence[int]) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one layer, e.g. [32, 64]")
        self.stem = nn.Identity()  # the first conv layer is group 0
        layers, size, cin = [], input_size, in_channels
        for i, cout in enumerate(channels):
            pool = i > 0 and can_halve(size)
            size = size // 2 if pool else size
            layers.append(ConvBNAct(cin, cout, pool=pool))
            cin = cout
        self.groups = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, num_classes)


@MODELS.register("mlp")
def mlp(num_classes: int, in_channels: int, input_size: int,
        hidden: Sequence[int] = (256, 128), width: float = 1.0) -> MLP:
    """Fully connected net: ``hidden`` sizes, each × ``width``."""
    return MLP(num_classes, in_channels * input_size * input_size,
               [scaled(h, width) for h in hidden])


@MODELS.register("cnn_small")
def cnn_small(num_classes: int, in_channels: int, input_size: int,
              channels: Sequence[int] = (32, 64), width: float = 1.0) -> PlainCNN:
    """2-conv CNN for MNIST-like data (32 and 64 channels × ``width``)."""
    return PlainCNN(num_classes, in_channels, input_size, [scaled(c, width) for c in channels])


@MODELS.register("cnn4")
def cnn4(num_classes: int, in_channels: int, input_size: int,
         channels: Sequence[int] = (32, 64, 64, 128), width: float = 1.0) -> PlainCNN:
    """4-conv CNN, Knowledge Factorization's MNIST teacher (the paper gives no widths; ours
    are 32/64/64/128 × ``width``, pools between layers: 28 → 14 → 7 → 3)."""
    return PlainCNN(num_classes, in_channels, input_size, [scaled(c, width) for c in channels])
