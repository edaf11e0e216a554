"""A driver killed with SIGKILL at seeded moments of one sweep; after every ``--resume`` the
invariants of docs/reliability.md ("A killed driver") hold, read from Tune's results and MLflow:

- a trial whose end is in Tune's saved state (finished, or stopped by ASHA) never runs again:
  its ``result.json`` is unchanged, and a stopped trial stays stopped;
- every trial has exactly one MLflow child run, named once; no run is left RUNNING;
- the Ray processes of the killed driver are ended by the next command.

Kill points: during the teacher's training; within a second (seeded) after a trial's final
report; right after an ASHA stop. The sweep: digits, 16 trials × 3 epochs, ASHA (grace 1,
factor 2), two trials at a time (16 trials), the driver in a subprocess starting its own local Ray.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EPOCHS, TRIALS = 3, 16  # enough trials that ASHA still stops some after kill 2 on a fast machine


def rows(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    out = []
    for line in f.read_text().splitlines() if f.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def saved_ended(exp: Path) -> dict[str, list[dict]]:
    """Trials Tune's saved experiment state records as TERMINATED, with their results."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except (ValueError, OSError):
        return {}
    done = [json.loads(t) for t, _ in data["trial_data"]]
    return {t["custom_dirname"]: rows(exp / t["custom_dirname"]) for t in done
            if t["status"] == "TERMINATED"}


def driver(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, log: Path, ready, delay: float = 0.0,
              timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the sweep ended before the kill point:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, "kill point not reached:\n" + log.read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def check(exp: Path, before: dict[str, list[dict]], db: Path, final: bool) -> None:
    """The invariants after a resume (``final``: the sweep has finished)."""
    for name, old in before.items():
        assert rows(exp / name) == old, f"{name} ran again after the kill"
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp_id = c.get_experiment_by_name("kill").experiment_id
    runs = c.search_runs([exp_id], max_results=1000)
    kids = [r for r in runs if r.data.tags.get("kdtune.role") == "trial"]
    names = [r.info.run_name for r in kids]
    assert len(names) == len(set(names)), f"duplicate child runs: {sorted(names)}"
    ids = [r.data.tags["kdtune.trial_id"] for r in kids]
    assert len(ids) == len(set(ids))
    if final:
        assert len(kids) == TRIALS
        assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
        # the persisted Optuna study (optuna-dashboard reads it): no trial left RUNNING either
        import optuna

        study = optuna.load_study(study_name="kill", storage=f"sqlite:///{db.parent / 'optuna.db'}")
        assert [t.number for t in study.trials if t.state.name == "RUNNING"] == []


@pytest.mark.slow
def test_sigkill_at_seeded_moments_then_resume(tmp_path):
    rng = random.Random(0)
    spec = {"name": "kill", "data": {"name": "digits", "train_limit": 500, "val_fraction": 0.3},
            "teacher": {"model": "cnn4", "epochs": 3},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
            "method": "kd", "epochs": EPOCHS,
            "search": {"num_samples": TRIALS, "seed": 0, "max_concurrent": 2},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "resources": {"cpu": 1, "gpu": 0}, "storage": str(tmp_path / "res")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp, db = tmp_path / "res" / "kill", tmp_path / "res" / "mlflow.db"
    kdtune = str(Path(sys.executable).parent / "kdtune")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", KDTUNE_RAY_SESSIONS=str(tmp_path / "sessions"))

    # 1. during the teacher's training
    log = tmp_path / "run1.log"
    proc = driver([kdtune, "sweep", "run", str(path)], log, env)
    kill_when(proc, log, lambda: "teacher epoch 1/" in log.read_text())
    records = list((tmp_path / "sessions").glob("*.json"))
    assert records, "the driver recorded no Ray session"
    recorded = [r["pid"] for r in json.loads(records[0].read_text())["processes"]]
    assert any(psutil.pid_exists(p) for p in recorded), "nothing left behind to test cleanup on"

    # 2. within a second (seeded) after a trial's final report
    def final_report() -> bool:
        return any(r.get("epoch") == EPOCHS for d in exp.glob("kd_*") for r in rows(d)[-1:])

    log = tmp_path / "run2.log"
    proc = driver([kdtune, "sweep", "run", str(path), "--resume"], log, env)
    kill_when(proc, log, final_report, delay=rng.uniform(0, 1))
    # the next command ended the first driver's Ray processes (and only those)
    assert not [p for p in recorded if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE], \
        "Ray processes of the killed driver are still running"
    before = saved_ended(exp)

    # 3. right after an ASHA stop
    log = tmp_path / "run3.log"
    proc = driver([kdtune, "sweep", "run", str(path), "--resume"], log, env)
    kill_when(proc, log, lambda: re.search(r"stopped at epoch \d \(ASHA\)", log.read_text()) is not None)
    check(exp, before, db, final=False)
    before = saved_ended(exp)
    stopped = {n: r for n, r in before.items() if r and r[-1]["epoch"] < EPOCHS}

    log = tmp_path / "run4.log"
    out = subprocess.run([kdtune, "sweep", "run", str(path), "--resume"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check(exp, before, db, final=True)
    for name, r in stopped.items():  # a trial ASHA stopped stays stopped
        assert rows(exp / name)[-1]["epoch"] == r[-1]["epoch"] < EPOCHS
    dirs = [d for d in exp.glob("kd_*") if (d / "result.json").is_file()]
    assert len(dirs) == TRIALS, sorted(d.name for d in dirs)
    assert (exp / "best.yaml").is_file()


@pytest.mark.slow
def test_resume_in_a_fresh_process_takes_stage_reports(tmp_path):
    """A method with a pre-stage (ft's paraphraser) reports results without the metric; a
    resumed sweep in a new process must accept them as the first run did (Tune's strict metric
    check is off on both paths)."""
    spec = {"name": "stage", "data": {"name": "digits", "train_limit": 1500, "val_fraction": 0.3},
            "teacher": {"model": "cnn4", "epochs": 1},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
            "method": "ft", "params": {"paraphraser_epochs": 20}, "epochs": 1,
            "search": {"num_samples": 1, "seed": 0}, "scheduler": {"type": "none"},
            "resources": {"cpu": 1, "gpu": 0}, "storage": str(tmp_path / "res")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    exp = tmp_path / "res" / "stage"
    kdtune = str(Path(sys.executable).parent / "kdtune")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_STRICT_METRIC_CHECKING")}
    env.update(PYTHONUNBUFFERED="1", KDTUNE_RAY_SESSIONS=str(tmp_path / "sessions"))

    def staged() -> bool:  # the trial has started, and reported none of its main epochs
        rs = [r for d in exp.glob("ft_*") for r in rows(d)]
        return any(exp.glob("ft_*")) and not any("val_acc" in r for r in rs)

    log = tmp_path / "run1.log"
    kill_when(driver([kdtune, "sweep", "run", str(path)], log, env), log, staged)
    # resumed, the trial starts again (no checkpoint before its first main epoch): stage reports
    out = subprocess.run([kdtune, "sweep", "run", str(path), "--resume"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "did not include the specified metric" not in out.stdout + out.stderr
    assert (exp / "best.yaml").is_file()
