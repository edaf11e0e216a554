"""Ray processes a killed ``kdtune sweep run`` leaves behind, found and ended later.

A driver that dies by SIGKILL cannot stop the local Ray it started; Ray's agents
(``DashboardAgent``, ``RuntimeEnvAgent``) and others live on until the next Ray start. So the
driver records the processes of its own local Ray (pid + start time, refreshed while it runs)
in ``<cache>/ray-sessions/<pid>.json``; the next ``kdtune sweep run`` or ``kdtune sweep
cleanup`` ends the recorded processes of drivers that are gone, and nothing else: a pid whose
start time differs (reused by another program) is left alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
from ray.tune import Callback

from kdtune.spec.paths import ray_sessions_dir


def _me() -> psutil.Process:
    return psutil.Process(os.getpid())


def record(folder: Path | None = None) -> Path:
    """Write (or refresh) this driver's record: itself and every process it started."""
    folder = folder or ray_sessions_dir()
    folder.mkdir(parents=True, exist_ok=True)
    me = _me()
    procs = [{"pid": p.pid, "started": p.create_time()} for p in me.children(recursive=True)]
    path = folder / f"{me.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": {"pid": me.pid, "started": me.create_time()},
                               "processes": procs, "at": time.time()}))
    tmp.replace(path)
    return path


class Recorder(Callback):
    """Refreshes the record as trials start (Ray starts agents and workers after ``init``)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self._last = every, 0.0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            try:
                record()
            except OSError:
                pass  # bookkeeping: never a reason for a sweep to fail


def _alive(pid: int, started: float) -> psutil.Process | None:
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - started) < 1e-3 else None
    except psutil.Error:
        return None


def cleanup(folder: Path | None = None, log=print) -> int:
    """End the recorded processes of drivers that are gone; returns how many were ended."""
    folder = folder or ray_sessions_dir()
    ended = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _alive(rec["driver"]["pid"], rec["driver"]["started"]):
            continue  # a sweep still running: its Ray is its own
        left = [p for r in rec["processes"] if (p := _alive(r["pid"], r["started"]))]
        for p in left:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(left, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        ended += len(left)
        path.unlink(missing_ok=True)
        if left:
            log(f"ended {len(left)} Ray process(es) left by a killed kdtune driver "
                f"(pid {rec['driver']['pid']})")
    return ended
