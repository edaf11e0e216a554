"""Teacher cache: trained once, keyed by everything that determines it; given checkpoints used as is."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtune.spec import SpecError, parse_spec
from kdtune.training.teacher import ensure_teacher, load_teacher, teacher_key


def spec_for(tmp_path: Path, **teacher):
    t = {"model": "cnn_small", "epochs": 1, "kwargs": {"width": 0.25}}
    t.update(teacher)
    return parse_spec({"name": "tc", "data": {"name": "digits", "train_limit": 300},
                       "teacher": t, "method": "scratch", "storage": str(tmp_path)})


def test_second_call_trains_nothing(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    logs: list[str] = []
    first = ensure_teacher(spec, log=logs.append)
    assert first.trained and first.path.is_file()
    mtime = first.path.stat().st_mtime_ns
    logs.clear()
    second = ensure_teacher(spec, log=logs.append)
    assert not second.trained and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime  # not rewritten
    assert any("cached" in m for m in logs) and not any("training" in m for m in logs)
    assert second.meta["classes"] == list(range(10))


def test_key_changes_with_what_determines_the_teacher(tmp_path: Path) -> None:
    a = teacher_key(spec_for(tmp_path))
    assert a == teacher_key(spec_for(tmp_path))
    assert a != teacher_key(spec_for(tmp_path, epochs=2))
    assert a != teacher_key(spec_for(tmp_path, classes={"first": 5}))
    assert a != teacher_key(spec_for(tmp_path, kwargs={"width": 0.5}))


def test_given_checkpoint_is_used_as_is(tmp_path: Path) -> None:
    trained = ensure_teacher(spec_for(tmp_path / "a"))
    spec = spec_for(tmp_path / "b", checkpoint=str(trained.path))
    logs: list[str] = []
    given = ensure_teacher(spec, log=logs.append)
    assert not given.trained and given.path == trained.path
    assert not (tmp_path / "b" / "teachers").exists()
    model = load_teacher(given, "cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="teacher.checkpoint"):
        ensure_teacher(spec_for(tmp_path, checkpoint=str(tmp_path / "none.pt")))
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(SpecError, match="not a kdtune checkpoint"):
        ensure_teacher(spec_for(tmp_path, checkpoint=str(tmp_path / "foreign.pt")))
