"""Names kdtune gives things in a tracking store (tags, files) and the pure value helpers that
turn Python values into what MLflow stores.

Tags are the store's index: runs are found again by them (``kdtune.sweep_uid``,
``kdtune.trial_id``, ``kdtune.teacher_key``), so renaming one orphans every existing run.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kdtune.redact import redact

ROLE, SWEEP, TRIAL, TEACHER = "kdtune.role", "sweep", "trial", "teacher"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "kdtune.trial_id"
SWEEP_TAG = "kdtune.sweep"
SWEEP_UID_TAG = "kdtune.sweep_uid"
TEACHER_RUN_TAG = "kdtune.teacher_run_id"
TEACHER_KEY_TAG = "kdtune.teacher_key"
ERROR_TAG = "kdtune.error"
RUN_ID_FILE = "mlflow_parent_run_id"    # <run_dir>/…: the sweep's parent run, for --resume
PENDING_FILE = "mlflow_pending.jsonl"   # <run_dir>/…: writes not sent when the sweep ended
SKIPPED_FILE = "mlflow_pending.skipped.jsonl"  # spool lines/ops that could not be read back
SPOOL_DIR = ".mlflow_spool"             # <run_dir>/…: copies of files a pending write uploads
CHECKPOINT_DIR = "checkpoint"  # every kdtune run keeps its checkpoint under this artifact folder
MODEL_NAME = "student"  # the logged model's name inside a promoted run
PARAM_MAX = 6000  # MLflow's param value limit


def _str(v: Any) -> str:
    """A param/tag value as MLflow stores it: text, secrets masked, within MLflow's limit."""
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return redact(s)[:PARAM_MAX]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """A config as plain YAML-able values (numpy scalars → Python)."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
            v = v.item()
        out[k] = _plain(v) if isinstance(v, dict) else v
    return out


def _q(s: str) -> str:
    """A value quoted for an MLflow filter string (``tags.`x` = '…'``)."""
    return s.replace("'", "\\'")


def _now_ms() -> int:
    return int(time.time() * 1000)
