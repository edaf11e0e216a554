"""Splits resident in memory: raw datasets, class subsets, seeded train/val/test splits.

A dataset is a registry entry ``(root, download) -> RawData`` (see ``datasets.py``);
``load_data`` turns one into ``DataSplits`` for a class subset, a size budget and a seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdtune.registry import DATASETS


@dataclass
class RawData:
    """What a dataset loader returns: both official splits as uint8 NCHW tensors."""

    train_x: Tensor  # uint8 [N, C, H, W]
    train_y: Tensor  # int64 [N], original class ids 0..num_classes-1
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    augment: bool  # crop + flip suits it by default (32×32 RGB photos)


@dataclass
class TensorData:
    """One split, resident in memory."""

    x: Tensor  # uint8 [N, C, H, W]
    y: Tensor  # int64 [N], remapped to 0..k-1
    rows: Tensor | None = None  # int64 [N]: row ids in the dataset's own train (or test) split

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    """train/val/test of one class subset, plus what models and loaders need to know."""

    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    in_channels: int
    input_size: int
    classes: list[int]  # classes[i] = original id of new label i
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool


def default_root() -> Path:
    """Per-user data folder: ``$KDTUNE_DATA`` or ``~/.cache/kdtune/data``."""
    env = os.environ.get("KDTUNE_DATA")
    return Path(env) if env else Path.home() / ".cache" / "kdtune" / "data"


def seed_of(*parts: int) -> int:
    """A 32-bit seed mixed from several ints, so (seed, epoch) never collides with (seed+1, epoch-1)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0])


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_classes(classes: object, num_classes: int, field: str = "classes") -> list[int]:
    """``"all"`` | ``[ids...]`` | ``{"first": k}`` → original class ids, in label order.

    Raises ``ValueError("<field>: ...")`` with one line naming the problem.
    """
    if hasattr(classes, "model_dump"):  # a pydantic model of {first: k}
        classes = classes.model_dump()
    if classes == "all":
        return list(range(num_classes))
    if isinstance(classes, Mapping):
        k = classes.get("first")
        if set(classes) != {"first"} or not _is_int(k):
            raise ValueError(f"{field}: expected {{first: k}} with an integer k, got {dict(classes)!r}")
        if not 1 <= k <= num_classes:
            raise ValueError(f"{field}: first {k} out of range 1..{num_classes}")
        return list(range(k))
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        if not classes:
            raise ValueError(f"{field}: the class list is empty")
        seen: set[int] = set()
        for c in classes:
            if not _is_int(c):
                raise ValueError(f"{field}: class {c!r} is not an integer")
            if not 0 <= c < num_classes:
                raise ValueError(f"{field}: class {c} out of range 0..{num_classes - 1}")
            if c in seen:
                raise ValueError(f"{field}: class {c} listed twice")
            seen.add(int(c))
        return [int(c) for c in classes]
    raise ValueError(f"{field}: expected 'all', a list of class ids or {{first: k}}, got {classes!r}")


_RAW_CACHE: dict[tuple[str, str | None], RawData] = {}


def raw_data(name: str, root: str | os.PathLike | None = None, download: bool = False) -> RawData:
    """The registered dataset ``name``, loaded once per process (keyed by name and root)."""
    loader = DATASETS.get(name)  # unknown names: the registry's error with close matches
    key = (name, None if root is None else str(Path(root).expanduser().resolve()))
    if key not in _RAW_CACHE:
        _RAW_CACHE[key] = loader(key[1], download)
    return _RAW_CACHE[key]


def clear_cache() -> None:
    """Forget every dataset loaded so far (frees memory; tests)."""
    _RAW_CACHE.clear()


def _subset(x: Tensor, y: Tensor, lut: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    new = lut[y]
    rows = torch.nonzero(new >= 0).flatten()
    return x[rows], new[rows], rows


def load_data(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
              train_limit: int | None = None, val_fraction: float = 0.1, classes: object = "all",
              seed: int = 0, classes_field: str = "classes") -> DataSplits:
    """Load ``name`` from the ``DATASETS`` registry and split it.

    Order: keep the rows of ``classes`` (labels remapped to their position in that list) →
    ``train_limit`` (a seeded subset of at most N training images) → a seeded validation split
    of ``val_fraction`` of those (at least one image when > 0) → the rest is train. Test is the
    dataset's own test split, class filtered. ``classes_field`` names the spec field in errors.
    """
    if train_limit is not None and (not _is_int(train_limit) or train_limit < 1):
        raise ValueError(f"data.train_limit: must be a positive integer or null, got {train_limit!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction: must be in [0, 1), got {val_fraction!r}")
    raw = raw_data(name, root, download)
    keep = resolve_classes(classes, raw.num_classes, classes_field)
    lut = torch.full((raw.num_classes,), -1, dtype=torch.int64)
    lut[keep] = torch.arange(len(keep))

    x, y, rows = _subset(raw.train_x, raw.train_y, lut)
    # Rank rows by one seeded permutation of the *whole* train split, not of the subset: then
    # for one seed, a class subset's val images are (nearly) the superset's val images of those
    # classes, so a teacher trained on all classes has not trained on the student's val set.
    rank = torch.randperm(len(raw.train_y), generator=torch.Generator().manual_seed(seed_of(seed)))
    order = torch.argsort(rank[rows])
    if train_limit is not None:
        order = order[:train_limit]
    n = len(order)
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"data.val_fraction: {val_fraction} of {n} training images leaves none to train on")
    val_i, train_i = order[:n_val].sort().values, order[n_val:].sort().values  # keep file order

    tx, ty, trows = _subset(raw.test_x, raw.test_y, lut)
    return DataSplits(
        train=TensorData(x[train_i], y[train_i], rows[train_i]),
        val=TensorData(x[val_i], y[val_i], rows[val_i]),
        test=TensorData(tx, ty, trows),
        num_classes=len(keep), in_channels=raw.train_x.shape[1], input_size=raw.train_x.shape[2],
        classes=keep, mean=tuple(raw.mean), std=tuple(raw.std), augment=raw.augment,
    )
