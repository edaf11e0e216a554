"""Checkpoints: plain state dicts (tensors, numbers, strings) that load weights-only.

``torch.load(..., weights_only=True)`` everywhere: a planted pickle cannot run code. A
checkpoint stores the student's architecture beside its weights, so ``load_student`` rebuilds it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdtune.models import TappedModel, create_model
from kdtune.spec.paths import CHECKPOINT
from kdtune.spec.schema import SpecError


def arch_of(model: nn.Module) -> dict[str, Any]:
    """What rebuilds the student's architecture (stored beside its weights)."""
    spec = dict(getattr(model, "spec", {}))
    if isinstance(model, TappedModel):
        spec["num_classes"] = model.num_classes
    return spec


def state_dict(ctx: Any, method: Any, epoch: int, stages_done: int,
               schedules: list | None = None) -> dict[str, Any]:
    return {
        "student": ctx.student.state_dict(),
        "extras": ctx.extras.state_dict(),
        "optimizers": [o.state_dict() for o in ctx.optimizers] if schedules else [],
        "schedules": [s.state_dict() for s in schedules] if schedules else [],
        "method": method.state_dict(),
        "epoch": epoch,
        "stages_done": stages_done,
        "arch": arch_of(ctx.student),
        "classes": list(ctx.data.classes),
    }


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
    return path


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Weights-only load: refuses pickled code (a planted payload raises)."""
    return torch.load(path, map_location=device, weights_only=True)


def refusal(e: BaseException) -> str:
    """Why a weights-only load refused a file, in one line. (torch's own message opens with
    advice to load it with ``weights_only=False``, i.e. to run whatever the file holds.)"""
    text = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1).split(". Please")[0].strip() if found else \
        (text.strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {reason[:200]}"


def load_student(path: str | Path, device: str | torch.device = "cpu") -> TappedModel:
    """Rebuild a student from a checkpoint (its architecture is stored beside the weights)."""
    state = load_state(path, device)
    arch = dict(state["arch"])
    model = create_model(arch.pop("name"), arch.pop("num_classes"), arch.pop("in_channels"),
                         arch.pop("input_size"), **arch.pop("kwargs", {}))
    model.load_state_dict(state["student"])
    return model.to(device).eval()


def read_meta(path: Path) -> dict[str, Any]:
    """A teacher checkpoint's metadata (architecture, classes, scores); SpecError for a file
    that is not a kdtune checkpoint loading weights-only."""
    try:
        with warnings.catch_warnings():  # (torch warns about foreign pickle protocols)
            warnings.simplefilter("ignore")
            state = load_state(path)  # weights only: a pickled payload is refused, never run
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise SpecError(f"teacher.checkpoint: {str(path)!r} refused: not a kdtune checkpoint that "
                        f"loads weights-only ({refusal(e)})") from None
    if not isinstance(state, dict) or "arch" not in state or "student" not in state:
        raise SpecError(f"teacher.checkpoint: {str(path)!r} is not a kdtune checkpoint "
                        "(train one with `kdtune train` or pass a models:/ URI)")
    return dict(state.get("meta", {}), arch=state["arch"], classes=state["classes"])
