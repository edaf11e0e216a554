"""The model contract: every kdtune model is a ``TappedModel``.

A model is ``stem → groups[0] → … → groups[k-1] → pool → fc``. ``forward(x)`` returns logits
(what evaluation, export and serving use); ``forward_taps(x)`` returns the named taps methods
read by name ("teacher group 3 output", never ``feats[1:-1]``):

- ``stem``:        output of the stem (input to group 0)
- ``groups``:      list, output of each group (a residual stage, a conv layer, an MLP layer)
- ``penultimate``: the pooled, flattened vector fed to ``fc``
- ``logits``:      ``fc(penultimate)``

``blocks()`` lists the finest units (residual blocks, conv layers) in order, for methods that
work per layer (Knowledge Representing aggregates every c of them).
"""

from __future__ import annotations

import difflib
import inspect
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdtune.registry import MODELS

TAPS = ("stem", "groups", "penultimate", "logits")


class TappedModel(nn.Module):
    """Base class: subclasses set ``self.stem``, ``self.groups`` (ModuleList) and ``self.fc``."""

    stem: nn.Module
    groups: nn.ModuleList
    fc: nn.Linear
    spec: dict  # set by ``create_model``: name, num_classes, in_channels, input_size, kwargs

    def embed(self, h: Tensor) -> Tensor:
        """Last group's output → penultimate vector (global average pool for maps)."""
        if h.dim() == 4:
            return F.adaptive_avg_pool2d(h, 1).flatten(1)
        return h.flatten(1)

    def forward_taps(self, x: Tensor) -> dict[str, object]:
        h = self.stem(x)
        taps: dict[str, object] = {"stem": h}
        groups = []
        for g in self.groups:
            h = g(h)
            groups.append(h)
        taps["groups"] = groups
        p = self.embed(h)
        taps["penultimate"] = p
        taps["logits"] = self.fc(p)
        return taps

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_taps(x)["logits"]  # type: ignore[return-value]

    def blocks(self) -> list[nn.Module]:
        """Every block of every group, in forward order."""
        out: list[nn.Module] = []
        for g in self.groups:
            out.extend(g.children() if isinstance(g, nn.Sequential) else [g])
        return out

    @property
    def num_classes(self) -> int:
        return self.fc.out_features


class ModelArgumentError(TypeError):
    """A keyword argument the model's factory does not take; ``arg`` names it."""

    def __init__(self, arg: str, message: str) -> None:
        super().__init__(message)
        self.arg = arg


def check_kwargs(name: str, factory: object, kwargs: dict[str, object]) -> None:
    """Unknown keyword arguments → ModelArgumentError with the closest known name."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k in params if k not in ("num_classes", "in_channels", "input_size")]
    for arg in kwargs:
        if arg not in known:
            close = difflib.get_close_matches(arg, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (it takes {', '.join(known) or 'none'})"
            raise ModelArgumentError(arg, f"{name} has no argument {arg!r}{hint}")


def create_model(name: str, num_classes: int, in_channels: int, input_size: int,
                 **kwargs: object) -> TappedModel:
    """The only way code builds a model (timm's ``create_model``): registry name + shape.

    Raises ModelArgumentError for an unknown keyword argument and ValueError (naming the
    argument and its allowed range) for a value the factory refuses."""
    factory = MODELS.get(name)
    check_kwargs(name, factory, kwargs)
    model = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                    **kwargs)
    if not isinstance(model, TappedModel):
        raise TypeError(f"model {name!r} must build a TappedModel, got {type(model).__name__}")
    # What built it, as plain data, so code can rebuild the architecture (``widen``, checkpoint
    # loading); plain data keeps ``weights_only`` loads safe.
    model.spec = dict(name=name, num_classes=num_classes, in_channels=in_channels,
                      input_size=input_size, kwargs=dict(kwargs))
    return model


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameter count; ``nonzero`` counts only non-zero entries (pruned models)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


# --- small helpers shared by the zoo ----------------------------------------------------------


def scaled(channels: int, width: float) -> int:
    """``channels × width`` rounded half up to an int ≥ 1: every model's ``width`` multiplier.

    Rounding is monotone, so a larger ``width`` never gives fewer units (``widen`` relies on it).
    """
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"width must be a number > 0 (got {width!r})")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channel counts must be whole numbers >= 1 (got {channels!r})")
    return max(1, int(channels * width + 0.5))


def can_halve(size: int) -> bool:
    """Whether a 2×2 pool / stride-2 step keeps a ``size``×``size`` map at least 1×1.

    Factories decide from ``input_size`` at build time (no data-dependent control flow, so
    ``torch.export`` works), skipping a downsample on maps that are already 1×1.
    """
    return size >= 2


class ConvBNAct(nn.Module):
    """One conv layer as a block: [2×2 max-pool →] 3×3 conv → BN → ReLU.

    The pool comes *before* the conv so a group's output is the un-pooled map (RepDistiller's
    VGG taps features before its pools too) and the last group needs no pool before the GAP.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool = False) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(self.pool(x))))
