"""Teachers: train once, cache by a hash of everything that determines them, load by path.

``ensure_teacher(spec)`` returns a ``TeacherArtifact`` (checkpoint path + metadata). The cache
lives under ``<storage>/teachers/<key>/``; a second call with the same spec loads and says so.
``teacher.checkpoint`` (a path, or ``models:/NAME@alias`` from the MLflow registry) is used
as is, never retrained. Trials only ever read the teacher by path.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdtune import __version__
from kdtune.data import load_data
from kdtune.methods import make_method
from kdtune.params.walk import CommonParams
from kdtune.registry import METHODS
from kdtune.spec.paths import TEACHER_FILE, TEACHER_META, teachers_dir
from kdtune.spec.schema import Spec, SpecError
from kdtune.tracking.registry import download_registered_model
from kdtune.training.checkpoint import load_student, read_meta, save_state
from kdtune.training.context import TrialContext, pick_device
from kdtune.training.engine import train


@dataclass
class TeacherArtifact:
    path: Path            # a kdtune checkpoint (state dicts + arch), weights-only loadable
    meta: dict[str, Any]  # key, classes (original ids), model, test_acc, ...
    trained: bool = False  # trained by this call (False: cache hit or given checkpoint)


def teacher_key(spec: Spec) -> str:
    """Hash of all that determines the teacher: data view, architecture, training settings."""
    d, t = spec.data, spec.teacher
    ident = {
        "data": {"name": d.name, "root": d.root, "train_limit": d.train_limit,
                 "val_fraction": d.val_fraction, "augment": d.augment},
        "teacher": {"model": t.model, "classes": t.classes if isinstance(t.classes, (str, list))
                    else t.classes.model_dump(), "kwargs": t.kwargs, "epochs": t.epochs,
                    "params": t.params},
        "seed": spec.seed, "kdtune": __version__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def needs_teacher(spec: Spec) -> bool:
    return any(getattr(METHODS.get(m), "uses_teacher", True) for m in spec.methods)


def ensure_teacher(spec: Spec, log: Callable[[str], None] = print) -> TeacherArtifact:
    """The teacher's checkpoint: given, cached, or trained now (once)."""
    ckpt = spec.teacher.checkpoint
    if ckpt:
        if ckpt.startswith("models:/"):
            path = download_registered_model(ckpt, spec)
        else:
            path = Path(ckpt)
            if not path.is_file():
                raise SpecError(f"teacher.checkpoint: file {ckpt!r} not found")
        meta = read_meta(path)
        log(f"teacher: using {ckpt}")
        return TeacherArtifact(path, meta)
    folder = teachers_dir(spec) / teacher_key(spec)
    path = folder / TEACHER_FILE
    if path.is_file() and (folder / TEACHER_META).is_file():
        meta = json.loads((folder / TEACHER_META).read_text())
        log(f"teacher: cached {spec.teacher.model} ({path}), test_acc {meta.get('test_acc', float('nan')):.4f}")
        return TeacherArtifact(path, meta)
    return _train_teacher(spec, folder, log)


def _train_teacher(spec: Spec, folder: Path, log: Callable[[str], None]) -> TeacherArtifact:
    t = spec.teacher
    data = load_data(spec.data.name, root=spec.data.root, download=spec.data.download,
                     train_limit=spec.data.train_limit, val_fraction=spec.data.val_fraction,
                     classes=t.classes, seed=spec.data.split_seed)
    try:
        common = CommonParams(**t.params)
    except Exception as e:
        raise SpecError(f"teacher.params: {e}".splitlines()[0]) from None
    ctx = TrialContext(spec=spec.model_copy(update={"student": spec.student.model_copy(
        update={"model": t.model, "kwargs": t.kwargs})}), common=common, data=data,
        device=pick_device(spec.device), seed=spec.seed)
    log(f"teacher: training {t.model} on {spec.data.name} ({len(data.train)} images, "
        f"{data.num_classes} classes) for {t.epochs} epochs")
    states: list[dict] = []

    def report(metrics, state=None, *, stage=False):
        if not stage:
            log(f"teacher epoch {metrics['epoch']}/{t.epochs}: loss {metrics.get('loss', 0):.4f} "
                f"val_acc {metrics['val_acc']:.4f}")
        if state is not None:
            states[:] = [state]

    t0 = time.time()
    final = train(ctx, make_method("scratch", {}), report, epochs=t.epochs)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"key": folder.name, "model": t.model, "kwargs": t.kwargs, "classes": data.classes,
            "dataset": spec.data.name, "epochs": t.epochs, "val_acc": final["val_acc"],
            "test_acc": final["test_acc"], "seconds": round(time.time() - t0, 1)}
    state = dict(states[-1], meta=meta)
    save_state(state, folder / TEACHER_FILE)
    (folder / TEACHER_META).write_text(json.dumps(meta, indent=2))
    log(f"teacher: test_acc {final['test_acc']:.4f}, saved {folder / TEACHER_FILE}")
    return TeacherArtifact(folder / TEACHER_FILE, meta, trained=True)


def load_teacher(artifact: TeacherArtifact, device: torch.device) -> nn.Module:
    """The frozen teacher in eval mode (its BatchNorm statistics never move)."""
    model = load_student(artifact.path, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def class_index(teacher_classes: list[int], student_classes: list[int]) -> torch.Tensor | None:
    """Teacher logit column of each student class (G→S); None when the student has others."""
    pos = {c: i for i, c in enumerate(teacher_classes)}
    if not all(c in pos for c in student_classes):
        return None
    return torch.tensor([pos[c] for c in student_classes], dtype=torch.long)
