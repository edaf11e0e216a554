"""CIFAR-style VGG with BatchNorm (Simonyan & Zisserman 2015, in RepDistiller's CIFAR layout).

Five conv stages separated by 2×2 max-pools, global average pool, one linear classifier. Each
stage is one group; each conv layer one block. ``vgg8`` is RepDistiller's ``vgg8`` (cfg "S").
"""

from __future__ import annotations

from torch import nn

from kdtune.models._base import ConvBNAct, TappedModel, can_halve, scaled
from kdtune.registry import MODELS

# Output channels of each conv layer, per stage (RepDistiller's cfg S / A / B).
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(TappedModel):
    """Stages of ConvBNAct; stage k > 0 starts with a 2×2 max-pool unless the map is 1×1."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int,
                 stages: list[list[int]]) -> None:
        super().__init__()
        self.stem = nn.Identity()  # the first stage is group 0, as in RepDistiller
        groups, size, cin = [], input_size, in_channels
        for k, stage in enumerate(stages):
            pool = k > 0 and can_halve(size)
            size = size // 2 if pool else size
            layers = []
            for i, cout in enumerate(stage):
                layers.append(ConvBNAct(cin, cout, pool=pool and i == 0))
                cin = cout
            groups.append(nn.Sequential(*layers))
        self.groups = nn.ModuleList(groups)
        self.fc = nn.Linear(cin, num_classes)


def _register(name: str) -> None:
    def factory(num_classes: int, in_channels: int, input_size: int,
                width: float = 1.0) -> VGG:
        stages = [[scaled(c, width) for c in stage] for stage in CONFIGS[name]]
        return VGG(num_classes, in_channels, input_size, stages)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR {name} with BN; channels {CONFIGS[name]} × ``width``."
    MODELS.register(name, factory)


for _name in CONFIGS:
    _register(_name)
