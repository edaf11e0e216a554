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


def free_port() -> int:
    """A port nobody on 127.0.0.1 listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    """This process's resident memory."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def append_jsonl(path: Path, row: dict) -> dict:
    """One finished unit of a resumable benchmark, appended as a JSON line; returns ``row``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def local_cluster(cmd: str, folder: Path, *opts: str) -> None:
    """``clusters/local.sh CMD --dir FOLDER OPTS``: the two-node cluster on 127.0.0.1."""
    import subprocess

    subprocess.run(["bash", str(ROOT / "clusters/local.sh"), cmd, "--dir", str(folder), *opts],
                   check=True, stdout=subprocess.DEVNULL, env=os.environ)


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


# --------------------------------------------------------------------------- the G→S setting
# Fashion-MNIST, teacher cnn4 on all 10 classes, student cnn_small on the first 5, shared by
# bench_search and bench_vs_tune. Chosen (never on the report seeds 5-9) so that configurations
# separate late: over 24 random kd configs trained 8 epochs with this teacher, Spearman ρ of
# val_acc at epoch k with the last epoch was 0.74, 0.64, 0.75, 0.83, 0.96 for k = 1..5 (first
# ≥ 0.9 at epoch 5); an earlier draw of 24, with a teacher trained on 3,000 images, gave 0.35,
# 0.72, 0.79, 0.83, 0.94.
G2S = {"width": 0.25, "train_limit": 3500, "val": 2000, "epochs": 8, "teacher_epochs": 8}
G2S_QUICK = {"width": 0.5, "train_limit": None, "val": 0.3, "epochs": 2, "teacher_epochs": 2}
OUT = Path(__file__).resolve().parent / "out"  # gitignored


def g2s_spec(name: str, storage: str | Path, data_name: str, s: dict, teacher: str | None = None,
             overrides: list[str] | tuple[str, ...] = ()):
    """The setting's kd sweep spec (kdtune's defaults elsewhere), with ``--set``-style overrides.

    ``s["val"]``: validation images (≥ 1) or a fraction; ``teacher``: its checkpoint path."""
    from kdtune.spec import parse_spec
    from kdtune.spec.load import apply_overrides

    lim, val = s["train_limit"], s["val"]
    vf = val / lim if val >= 1 else val
    data = {"name": name, "storage": str(storage), "method": "kd",
            "data": {"name": data_name, "train_limit": lim, "val_fraction": vf},
            "teacher": {"model": "cnn4", "epochs": s["teacher_epochs"]},
            "student": {"model": "cnn_small", "classes": {"first": 5}, "kwargs": {"width": s["width"]}},
            "epochs": s["epochs"], "resources": {"cpu": 1}}
    if teacher:
        data["teacher"] = {"model": "cnn4", "checkpoint": str(teacher)}
    return parse_spec(apply_overrides(data, list(overrides)))


def g2s_teacher(spec, log=lambda s: None):
    """(teacher, facts): the cnn4 teacher on all classes, trained once (cached by kdtune under
    the spec's storage), and what it was trained on.

    Its view of the data is chosen so that it never trains on the student's validation images:
    rows are ranked by one permutation of the whole train split, so the student's first n_val
    rows of its 5 classes are about the first 2·n_val rows of all 10; the teacher holds out
    2.1·n_val (a 3σ margin) and trains on the next rows. ``facts`` counts the student's
    validation images that nonetheless landed in the teacher's training rows."""
    from kdtune.data import load_data, raw_data
    from kdtune.training.teacher import ensure_teacher

    d = spec.data
    student = load_data(d.name, train_limit=d.train_limit, val_fraction=d.val_fraction,
                        classes=spec.student.classes, seed=d.split_seed)
    n_val, k = len(student.val), len(student.classes)
    n_all = len(raw_data(d.name).train_y)
    ratio = raw_data(d.name).num_classes / k
    t_limit = None if d.train_limit is None else min(n_all, 3 * d.train_limit)
    t_rows = t_limit or n_all
    t_vf = min(0.9, 2.1 * ratio / 2 * n_val / t_rows)
    tspec = spec.model_copy(deep=True)
    tspec.data.train_limit, tspec.data.val_fraction = t_limit, t_vf
    tspec.teacher.checkpoint = None
    teacher = ensure_teacher(tspec, log=log)
    t_data = load_data(d.name, train_limit=t_limit, val_fraction=t_vf, classes=spec.teacher.classes,
                       seed=d.split_seed)
    leak = len(set(student.val.rows.tolist()) & set(t_data.train.rows.tolist()))
    return teacher, {"teacher_train_images": len(t_data.train), "teacher_test_acc":
                     round(float(teacher.meta.get("test_acc", float("nan"))), 4),
                     "student_train_images": len(student.train), "val_images": n_val,
                     "val_images_in_teacher_train": leak}
