"""Tune's saved state cut short by a killed driver (``kdtune/tune/state.py``): ``--resume``
restores the newest whole snapshot instead of letting Tune restart the experiment from zero
(which forgot every finished trial and overwrote best.yaml), or stops with one line."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdtune.spec.schema import SpecError
from kdtune.tune.state import check_state, whole

S1, S2 = "2026-01-01_10-00-00", "2026-01-01_11-00-00"


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def snapshot(folder: Path, session: str) -> None:
    (folder / f"experiment_state-{session}.json").write_text('{"trial_data": [], "runner_data": {}}')
    (folder / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": 3}))
    (folder / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"trials": list(range(100))}))


def test_whole_reads_json_and_pickles_to_their_end():
    p = pickle.dumps({"a": list(range(1000)), "b": "x" * 100})
    assert whole(p, "searcher-state-x.pkl") and whole(b'{"a": 1}', "experiment_state-x.json")
    assert not whole(p[:-1], "searcher-state-x.pkl")
    assert not whole(p[: len(p) // 2], "search_gen_state-x.json")  # Tune's pickled ".json"
    assert not whole(b'{"a": ', "experiment_state-x.json")
    assert not whole(b"", "experiment_state-x.json")


def test_a_cut_newest_session_is_moved_aside(tmp_path):
    snapshot(tmp_path, S1)
    snapshot(tmp_path, S2)
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"t": 1}))
    cut(tmp_path / f"searcher-state-{S2}.pkl")
    said: list[str] = []
    assert check_state(str(tmp_path), said.append) is False  # tuner.pkl is whole
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if S2 in n] == [f".cut-experiment_state-{S2}.json",
                                             f".cut-search_gen_state-{S2}.json",
                                             f".cut-searcher-state-{S2}.pkl"]
    assert len([n for n in names if S1 in n and not n.startswith(".")]) == 3
    assert len(said) == 1 and f"searcher-state-{S2}.pkl" in said[0]
    assert check_state(str(tmp_path), said.append) is False and len(said) == 1  # now whole: silent


def test_no_whole_session_stops_and_moves_nothing(tmp_path):
    snapshot(tmp_path, S1)
    cut(tmp_path / f"experiment_state-{S1}.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SpecError, match="--resume: .*cut short.*--set name=<new>"):
        check_state(str(tmp_path), print)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_session_without_its_experiment_state_is_not_restored(tmp_path):
    snapshot(tmp_path, S1)
    snapshot(tmp_path, S2)
    (tmp_path / f"experiment_state-{S2}.json").unlink()  # killed before Tune wrote it
    assert check_state(str(tmp_path), lambda m: None) is True  # (and no tuner.pkl: write it)
    assert [p.name for p in tmp_path.iterdir() if S2 in p.name and not p.name.startswith(".cut-")] == []


def staging(ray_tmp: Path, exp: str, session: str) -> Path:
    folder = ray_tmp / "ray" / "session_2026_x" / "artifacts" / "2026-01-01_10-00-00" / exp / "driver_artifacts"
    folder.mkdir(parents=True)
    snapshot(folder, session)
    return folder


def test_the_only_session_cut_is_copied_again_from_the_drivers_staging_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    exp = tmp_path / "res" / "sweep"
    exp.mkdir(parents=True)
    snapshot(exp, S1)
    folder = staging(tmp_path / "tmp", "sweep", S1)
    cut(exp / f"searcher-state-{S1}.pkl")
    said: list[str] = []
    check_state(str(exp), said.append)
    for f in folder.iterdir():  # whole again, nothing moved aside
        assert (exp / f.name).read_bytes() == f.read_bytes()
    assert not list(exp.glob(".cut-*"))
    assert len(said) == 1 and "staging folder" in said[0] and S1 in said[0]


def test_a_cut_staging_copy_or_another_experiments_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    exp = tmp_path / "res" / "sweep"
    exp.mkdir(parents=True)
    snapshot(exp, S1)
    cut(exp / f"experiment_state-{S1}.json")
    cut(staging(tmp_path / "tmp", "sweep", S1) / f"experiment_state-{S1}.json")
    staging(tmp_path / "tmp", "another-sweep", S1)  # whole, but not this sweep's
    with pytest.raises(SpecError, match="cut short"):
        check_state(str(exp), print)


@pytest.mark.slow
def test_resume_after_a_cut_snapshot_keeps_every_finished_trial(tmp_path):
    """A real finished sweep, then its state as a killed driver might leave it: its only
    session's searcher state and tuner.pkl cut short (copied again from the driver's staging
    folder), then a newer session cut with no staging copy (moved aside). ``--resume`` ends
    with the same three trials and the same best.yaml each time (Tune itself would restart and
    keep one trial); with every snapshot cut it stops with one line."""
    spec = {"name": "cut", "data": {"name": "digits", "train_limit": 400, "val_fraction": 0.3},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}}, "method": "scratch",
            "epochs": 1, "search": {"num_samples": 3, "max_concurrent": 1},
            "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0},
            "storage": str(tmp_path / "res")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [str(Path(sys.executable).parent / "kdtune"), "sweep", "run", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["KDTUNE_RAY_SESSIONS"] = str(tmp_path / "sessions")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    exp = tmp_path / "res" / "cut"
    best = (exp / "best.yaml").read_text()
    (s1,) = [p.name[len("experiment_state-"):-len(".json")] for p in exp.glob("experiment_state-*")]
    cut(exp / f"searcher-state-{s1}.pkl")  # the sweep's only session
    cut(exp / "tuner.pkl")
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "staging folder" in out.stdout and "top 5 of 3" in out.stdout, out.stdout[-2000:]
    assert (exp / "best.yaml").read_text() == best

    s2 = str(int(s1[:4]) + 1) + s1[4:]  # a later session: the one the kill cut short
    for f in [f for f in exp.iterdir() if s1 in f.name]:
        shutil.copy(f, exp / f.name.replace(s1, s2))
    cut(exp / f"searcher-state-{s2}.pkl")
    cut(exp / "tuner.pkl")

    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "moved aside" in out.stdout and "top 5 of 3" in out.stdout, out.stdout[-2000:]
    assert (exp / "best.yaml").read_text() == best

    for f in exp.glob("experiment_state-*.json"):  # every snapshot cut: one line, exit 2
        cut(f)
    env["RAY_TMPDIR"] = str(tmp_path / "elsewhere")  # (resumed on a machine without staging copies)
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cut short" in out.stderr and "--set name=<new>" in out.stderr
