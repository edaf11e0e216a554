"""The engine: real training on digits, exact checkpoint round trips, resume equivalence."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kdtune.spec import parse_spec
from kdtune.training.checkpoint import load_state, load_student, save_state
from kdtune.params.walk import resolve_params
from kdtune.training.trial import make_context, run_trial


def spec_for(tmp_path: Path, **kw):
    d = {"name": "eng", "data": {"name": "digits", "val_fraction": 0.2},
         "student": {"model": "cnn4"}, "method": "scratch", "epochs": 4,
         "params": {"batch_size": 32, "lr": 0.05}, "storage": str(tmp_path)}
    d.update(kw)
    return parse_spec(d)


class Recorder:
    def __init__(self):
        self.epochs, self.states = [], []

    def __call__(self, metrics, state=None, *, stage=False):
        if not stage:
            self.epochs.append(metrics)
            # the state holds live tensors (a reporter persists it before returning)
            self.states.append(copy.deepcopy(state))


def test_cnn4_learns_digits(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    rec = Recorder()
    final = run_trial(spec, resolve_params(spec), None, rec, seed=0)
    assert [m["epoch"] for m in rec.epochs] == [1, 2, 3, 4]
    assert final["val_acc"] >= 0.90, final
    assert 0.85 <= final["test_acc"] <= 1.0
    assert {"ce", "loss", "val_loss", "lr", "params_count"} <= set(final)


def test_a_last_training_batch_of_one_row_is_dropped(tmp_path: Path) -> None:
    """577 training rows at batch 32 leave one row: cnn4's last group is 1×1 on 8×8 digits, and
    BatchNorm cannot train on one value per channel (this run raised ValueError before)."""
    spec = spec_for(tmp_path, epochs=1, student={"model": "cnn4", "classes": {"first": 5},
                                                "kwargs": {"width": 0.5}})
    ctx, _ = make_context(spec, resolve_params(spec), None, seed=0)
    assert len(ctx.data.train) % 32 == 1
    assert [len(y) for _, y, _ in ctx.train_loader][-1] == 32  # 18 full batches, the one row dropped
    assert sum(len(y) for _, y, _ in ctx.loader("val")) == len(ctx.data.val)  # evaluation keeps all
    final = run_trial(spec, resolve_params(spec), None, Recorder(), seed=0)
    assert final["epoch"] == 1


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, epochs=1)
    rec = Recorder()
    run_trial(spec, resolve_params(spec), None, rec, seed=0)
    path = save_state(rec.states[-1], tmp_path / "ck" / "checkpoint.pt")
    model = load_student(path)
    ctx, _ = make_context(spec, resolve_params(spec), None, seed=0)
    x = next(iter(ctx.loader("test")))[0]
    again = load_student(path)
    assert torch.equal(model(x), again(x))
    # the saved weights equal the trained ones exactly
    state = load_state(path)
    for k, v in rec.states[-1]["student"].items():
        assert torch.equal(state["student"][k], v)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, epochs=3)
    config = resolve_params(spec)
    full = Recorder()
    run_trial(spec, config, None, full, seed=1)
    # a run killed after epoch 1 resumes from the epoch-1 checkpoint state
    restored = Recorder()
    run_trial(spec, config, None, restored, seed=1, restore=full.states[0])
    assert [m["epoch"] for m in restored.epochs] == [2, 3]
    assert restored.epochs[-1]["val_acc"] == full.epochs[-1]["val_acc"]
    assert abs(restored.epochs[-1]["loss"] - full.epochs[-1]["loss"]) < 1e-6
    for k, v in full.states[-1]["student"].items():
        assert torch.allclose(restored.states[-1]["student"][k].float(), v.float(), atol=1e-6), k


def test_weights_only_load_refuses_pickled_code(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"student": Evil()}, f)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_state(p)
