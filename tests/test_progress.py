"""A sweep's progress output: the plain status lines and per-trial lines of ``kdtune sweep run``
without a TTY, with Ray's, Tune's and MLflow's own chatter hidden; the live panel's counts and
ETA on stand-in trials; and ``kdtune.tune.quiet`` undone by ``verbose``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from kdtune.tune import progress as progress_mod
from kdtune.tune.progress import Progress, status_every
from kdtune.tune.quiet import LOGGERS, NEW_OUTPUT_ENV, is_quiet, quiet

KDTUNE = Path(sys.executable).with_name("kdtune")

# what Ray, Tune and MLflow print on their own (kdtune.tune.quiet hides each)
CHATTER = [
    "Configuration for experiment",
    "View detailed results here",
    "tensorboard --logdir",
    "Token authentication is",
    "Creating initial MLflow database tables",
    "Updating database tables",
    "maximum number of pending trials",
]


def test_cli_sweep_without_tty_prints_status_lines_and_no_chatter(tmp_path):
    """A tiny real sweep through the CLI, stdout piped: status lines every second, one line per
    trial in the wording other tools grep, and none of Ray's, Tune's or MLflow's chatter."""
    spec = {"name": "prog", "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
            "teacher": {"model": "cnn4", "epochs": 1},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
            "method": "kd", "epochs": 3, "search": {"num_samples": 4},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "storage": str(tmp_path / "res")}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, "KDTUNE_PROGRESS_S": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", NEW_OUTPUT_ENV):
        env.pop(k, None)  # its own local Ray and the spec's sqlite store; Tune's default output
    r = subprocess.run([str(KDTUNE), "sweep", "run", str(path)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "teacher epoch 1/" in r.stdout
    status = re.findall(r"^  status: \d+ pending, \d+ running, \d+ finished, \d+ stopped early, "
                        r"\d+ failed · epochs \d+/12 .* · elapsed \d+:\d\d:\d\d · ETA ", r.stdout,
                        flags=re.M)
    assert len(status) >= 2, r.stdout
    trials = re.findall(r"^  kd_\d+  val_acc \d\.\d{4} · (done|stopped at epoch \d \(ASHA\)) · lr=",
                        r.stdout, flags=re.M)
    assert len(trials) == 4 and "done" in trials, r.stdout
    for text in CHATTER:
        assert text not in out, f"{text!r} printed:\n{out[-4000:]}"


# --------------------------------------------------------------------------- stand-in trials
def trial(tid: str, status: str, epoch: int | None = None, value: float | None = None,
          **config) -> SimpleNamespace:
    last = {} if epoch is None else {"epoch": epoch, "val_acc": value}
    return SimpleNamespace(trial_id=tid, status=status, last_result=last, config=config,
                           path=f"/res/prog/{tid}")


def fed(p: Progress, trials: list, upto: dict[str, int], values: dict[str, float]) -> None:
    """Report epochs 1..upto[t] for each trial through the callback, as Tune would."""
    for t in trials:
        for e in range(1, upto.get(t.trial_id, 0) + 1):
            t.last_result = {"epoch": e, "val_acc": values[t.trial_id]}
            p.on_trial_result(0, trials, t, t.last_result)


def sweep_state(p: Progress, monkeypatch):
    """Six samples of 3 epochs: one running (epoch 2), one finished, one stopped by ASHA at
    epoch 1, one failed before its first epoch, one pending, one not sampled yet; 60 s in."""
    trials = [trial("kd_001", "RUNNING", lr=0.01, optimizer="sgd"),
              trial("kd_002", "TERMINATED", lr=0.002, optimizer="adamw"),
              trial("kd_003", "TERMINATED", lr=0.1, optimizer="sgd"),
              trial("kd_004", "ERROR", lr=0.5, optimizer="sgd"),
              trial("kd_005", "PENDING", lr=0.03, optimizer="sgd")]
    clock = {"now": 1000.0}
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock["now"])
    p.setup()
    fed(p, trials, {"kd_001": 2, "kd_002": 3, "kd_003": 1},
        {"kd_001": 0.5, "kd_002": 0.7, "kd_003": 0.3})
    # a pre-stage report: neither an epoch nor the trial's metric
    p.on_trial_result(0, trials, trials[0], {"stage/fitnet/loss": 1.5, "stage/fitnet/epoch": 1})
    trials[0].last_result = {"stage/fitnet/loss": 1.5, "stage/fitnet/epoch": 1}
    clock["now"] += 60
    return trials


def test_counts_epochs_best_and_eta(monkeypatch):
    p = Progress("val_acc", "max", 3, every=30, num_samples=6, live=False)
    trials = sweep_state(p, monkeypatch)
    c = p.counts(trials)
    assert (c.pending, c.running, c.finished, c.stopped, c.failed) == (2, 1, 1, 1, 1)
    # trained 2 + 3 + 1; skipped: kd_003's last 2 epochs, kd_004's 3; budget 6 × 3
    assert (c.trained, c.skipped, c.done, c.budget) == (6, 5, 11, 18)
    # 6 epochs in 60 s: the 7 left take 70 s
    assert p.eta_s(c) == 70
    assert p.status_line(trials) == (
        "status: 2 pending, 1 running, 1 finished, 1 stopped early, 1 failed · "
        "epochs 11/18 (61%: 6 trained, 5 skipped by early stops/failures) · "
        "best kd_002 val_acc 0.7000 (epoch 3) · elapsed 0:01:00 · ETA 0:01:10")

    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(p.render(trials))
    text = console.export_text()
    assert "trials: 2 pending, 1 running, 1 finished, 1 stopped early, 1 failed" in text
    assert re.search(r"kd_001\s+stage fitnet epoch 1\s+0\.5000\s+lr=0\.01 optimizer=sgd", text)
    assert "best so far: kd_002 val_acc 0.7000 (epoch 3) · lr=0.002 optimizer=adamw" in text
    assert "elapsed 0:01:00 · ETA 0:01:10" in text

    # back in the main epochs: the running row shows its epoch again
    trials[0].last_result = {"epoch": 3, "val_acc": 0.8}
    p.on_trial_result(0, trials, trials[0], trials[0].last_result)
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(p.render(trials))
    assert re.search(r"kd_001\s+3/3\s+0\.8000", console.export_text())
    assert p.counts(trials).trained == 7


def test_eta_unknown_before_the_first_epoch(monkeypatch):
    p = Progress("val_loss", "min", 3, num_samples=2, live=False)
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: 5.0)
    p.setup()
    trials = [trial("kd_001", "RUNNING"), trial("kd_002", "PENDING")]
    assert p.eta_s(p.counts(trials)) is None
    assert p.status_line(trials).endswith("· elapsed 0:00:00 · ETA ?")
    assert "best" not in p.status_line(trials)


def test_trial_lines_and_timed_status(monkeypatch, capsys):
    p = Progress("val_acc", "max", 3, every=0, num_samples=6, live=False)
    trials = sweep_state(p, monkeypatch)
    p.on_trial_complete(0, trials, trials[1])
    p.on_trial_complete(0, trials, trials[2])
    p.on_trial_error(0, trials, trials[3])
    p.on_step_end(0, trials)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "  kd_002  val_acc 0.7000 · done · lr=0.002 optimizer=adamw",
        "  kd_003  val_acc 0.3000 · stopped at epoch 1 (ASHA) · lr=0.1 optimizer=sgd",
        "  kd_004  ERROR, see /res/prog/kd_004/error.txt · lr=0.5 optimizer=sgd"]
    assert lines[3].startswith("  status: 2 pending, 1 running")


def test_status_interval_from_env(monkeypatch):
    monkeypatch.delenv("KDTUNE_PROGRESS_S", raising=False)
    assert status_every() == 30
    monkeypatch.setenv("KDTUNE_PROGRESS_S", "1")
    assert status_every() == 1
    assert Progress("val_acc", "max", 3).every == 1
    monkeypatch.setenv("KDTUNE_PROGRESS_S", "soon")
    assert status_every() == 30


def test_quiet_and_verbose_restores(monkeypatch):
    quiet(verbose=True)  # an in-process sweep of an earlier test may have left it quiet
    monkeypatch.delenv(NEW_OUTPUT_ENV, raising=False)
    before = {name: logging.getLogger(name).level for name in LOGGERS}
    try:
        quiet()
        assert is_quiet() and os.environ[NEW_OUTPUT_ENV] == "0"
        assert all(logging.getLogger(n).level == lvl for n, lvl in LOGGERS.items())
        # the insufficient-resources warning still reaches the user
        kept = logging.getLogger("ray.tune.execution.insufficient_resources_manager")
        assert kept.getEffectiveLevel() <= logging.WARNING
        # Ray's token-auth warning is dropped by its wording at the "ray" logger's handler
        handlers = logging.getLogger("ray").handlers
        assert handlers
        token = logging.LogRecord("ray.auth", logging.WARNING, __file__, 1, "Token authentication "
                                  "is enabled for this Ray cluster. Set RAY_AUTH_MODE=...", (), None)
        other = logging.LogRecord("ray.tune", logging.WARNING, __file__, 1, "No trial is running "
                                  "and no new trial has been started", (), None)
        assert all(not h.filter(token) and h.filter(other) for h in handlers)
    finally:
        quiet(verbose=True)
    assert not is_quiet() and NEW_OUTPUT_ENV not in os.environ
    assert all(h.filter(token) for h in handlers)
    assert {name: logging.getLogger(name).level for name in LOGGERS} == before
    # a value the user set is theirs
    monkeypatch.setenv(NEW_OUTPUT_ENV, "1")
    quiet()
    quiet(verbose=True)
    assert os.environ[NEW_OUTPUT_ENV] == "1"
