"""Shared by the benchmark scripts: data, timing, one JSON line out.

Every script measures its contenders side by side in one run (interleaved repetitions, medians),
because the machine's load varies; a ratio of two numbers taken minutes apart would not mean much.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
warnings.filterwarnings("ignore")


def fmnist_available() -> bool:
    from kdtune.data.datasets import DEBIAN_FASHION_MNIST, _IDX

    return all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in _IDX)


def dataset(quick: bool) -> str:
    """Fashion-MNIST (Debian's files); digits in --quick mode or where it is missing."""
    return "fashion-mnist" if not quick and fmnist_available() else "digits"


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


_stdout = None  # the real stdout, once quiet_stdout() has sent everything else to stderr


def quiet_stdout() -> None:
    """Send whatever else writes to stdout (Ray, Tune's tables, worker logs) to stderr, at the
    file-descriptor level, so that stdout carries only the one JSON line."""
    global _stdout
    sys.stdout.flush()
    _stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)


def emit(figures: dict) -> None:
    """The one line a benchmark prints on stdout."""
    out = _stdout or sys.stdout
    out.write(json.dumps(figures, sort_keys=False) + "\n")
    out.flush()


class Timer:
    """Wall seconds (``s``) and this process's CPU seconds (``cpu``). With one torch thread the
    CPU time is the work itself; the wall time also holds whatever else the machine ran."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
