"""What one training run holds, and how a model's taps are read.

``TrialContext`` carries everything a run needs (spec, hyperparameters, data, device, teacher,
student, helpers, optimisers); methods read it in their hooks. ``taps``/``teacher_taps`` read
a model's named outputs (``logits``, ``penultimate``, ``groups``, ``stem``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from kdtune.data import DataSplits, TensorLoader, load_data
from kdtune.models import TappedModel
from kdtune.params.walk import CommonParams
from kdtune.spec.schema import Spec


class Report(Protocol):
    """Receives each epoch's metrics and checkpoint state. The state holds the live tensors:
    persist it (``save_state``) before returning, do not keep it."""

    def __call__(self, metrics: dict[str, float], state: dict[str, Any] | None = None, *,
                 stage: bool = False) -> None: ...


class Batch(NamedTuple):
    x: Tensor
    y: Tensor | None  # None for label-free methods: they must not read it
    idx: Tensor       # row indices into the training split (teacher-output cache key)


def pick_device(name: str = "auto") -> torch.device:
    """auto: the first visible GPU (Ray sets CUDA_VISIBLE_DEVICES per trial), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrialContext:
    """Everything one training run needs; methods read it in their hooks."""

    spec: Spec
    common: CommonParams
    data: DataSplits
    device: torch.device
    seed: int = 0
    teacher: TappedModel | None = None
    teacher_index: Tensor | None = None  # student label i → teacher logit column
    teacher_classes: list[int] | None = None  # the teacher's original class ids, in its label order
    teacher_view: Callable[[Batch, tuple[str, ...]], dict[str, Any]] | None = None
    teacher_cache: bool = False  # the teacher's outputs come from the sweep's cache
    student: nn.Module | None = None
    extras: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    epoch: int = 0
    _train_loader: TensorLoader | None = None

    @property
    def train_loader(self) -> TensorLoader:
        """The main stage's loader, built once (one copy of the data on the device)."""
        if self._train_loader is None:
            self._train_loader = self.loader("train")
        return self._train_loader

    def loader(self, split: str = "train", *, shuffle: bool | None = None,
               augment: bool | None = None, batch_size: int | None = None,
               corruption: tuple[str, float] | None = None) -> TensorLoader:
        train = split == "train"
        aug = self.data.augment if self.spec.data.augment is None else self.spec.data.augment
        rows, bs = getattr(self.data, split), batch_size or (self.common.batch_size if train else 512)
        return TensorLoader(
            rows, self.data, bs,
            shuffle=train if shuffle is None else shuffle,
            seed=self.seed, augment=(aug and train) if augment is None else augment,
            device=self.device, corruption=corruption,
            # a last training batch of one row is dropped: BatchNorm cannot train on one value
            # per channel (a 1×1 map, e.g. cnn4's last group on 8×8 digits, or a vector)
            drop_last=train and len(rows) % bs == 1)

    def teacher_outputs(self, batch: Batch, needs: tuple[str, ...]) -> dict[str, Any] | None:
        """The teacher's taps for a batch (no grad), logits restricted to the student's classes."""
        if not needs or self.teacher is None:
            return None
        if self.teacher_view is not None:  # the shared teacher-output cache (kdtune/training/cache.py)
            out = self.teacher_view(batch, needs)
            if out is not None:  # None: not cached for this batch/needs, run the teacher
                return out
        with torch.no_grad(), autocast(self.device):
            out = teacher_taps(self.teacher, batch.x, needs)
        return restrict(out, self.teacher_index)


def restrict(out: dict[str, Any], index: Tensor | None) -> dict[str, Any]:
    if index is not None and "logits" in out:
        out = dict(out, logits=out["logits"].index_select(1, index))
    return out


def taps(model: nn.Module, x: Tensor, needs: tuple[str, ...]) -> dict[str, Any]:
    """Only logits: the plain forward (cheaper, exportable); anything else: all taps."""
    if tuple(needs) == ("logits",) or not hasattr(model, "forward_taps"):
        return {"logits": model(x)}
    return model.forward_taps(x)


# Tiny batches take other kernels (one row: a GEMV-like conv path; the MLP's GEMM below 4
# rows) whose rounding differs in the last bit; from 4 rows up a row's output is the same in any
# batch (measured on CPU: cnn4, cnn_small, resnet20, vgg8, mlp). Running the teacher on at least
# this many rows makes its per-row outputs independent of batching: what lets a cache computed
# once in row order equal the live teacher on shuffled batches bit for bit.
MIN_TEACHER_ROWS = 8


def teacher_taps(model: nn.Module, x: Tensor, needs: tuple[str, ...]) -> dict[str, Any]:
    """``taps`` for the frozen teacher, on at least ``MIN_TEACHER_ROWS`` rows (a short batch is
    padded with copies of its first row, which are dropped from the outputs)."""
    n = len(x)
    if n >= MIN_TEACHER_ROWS or n == 0:
        return taps(model, x, needs)
    # Pad by indexing, not torch.cat: indexing keeps x's channels_last strides (TensorLoader),
    # which pick the conv kernel; a cat gives NCHW strides, another kernel, other last bits.
    pad = torch.zeros(MIN_TEACHER_ROWS - n, dtype=torch.long, device=x.device)
    out = taps(model, x[torch.cat([torch.arange(n, device=x.device), pad])], needs)
    return {k: [g[:n] for g in v] if isinstance(v, list) else v[:n] for k, v in out.items()}


def autocast(device: torch.device):
    # bf16 on CUDA only: CPU autocast is slower than fp32 for these small convnets.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def student_data(spec: Spec) -> DataSplits:
    """The data view the spec's student trains on (its classes, split and limit)."""
    d = spec.data
    return load_data(d.name, root=d.root, download=d.download, train_limit=d.train_limit,
                     val_fraction=d.val_fraction, classes=spec.student.classes, seed=d.split_seed)


