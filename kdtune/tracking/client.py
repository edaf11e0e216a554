"""The MLflow client and the rules around every call: quiet defaults, which errors are worth a
retry, one-line error text, batched writes, and which store a command reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable

from kdtune.redact import redact
from kdtune.spec import Spec, parse_spec
from kdtune.spec.paths import tracking_uri
from kdtune.tracking.schema import _now_ms, _str

# Error codes that will never succeed on a retry (the rest: outage, lock, timeout → retry).
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
              "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
              "CUSTOMER_UNAUTHORIZED", "NOT_FOUND"}


def quiet_env() -> None:
    """MLflow defaults for a background writer (settings the user made win)."""
    # MLflow's own HTTP retries default to 7 with backoff factor 2 (minutes per call while a
    # server is down); the writer retries by itself, so keep each call short.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "🏃 View run … at: <tracking URI>" per ended run: noise from a background writer, and the
    # URI as given (a password in it included); the sweep's last line names the store instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def client(uri: str):
    """An MlflowClient on ``uri`` for tracking and the model registry (same store)."""
    from mlflow import MlflowClient  # lazy: MLflow takes seconds to import (`kdtune --help`)

    quiet_env()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_remote(uri: str) -> bool:
    """A tracking server (the client talks HTTP), not a database or folder kdtune writes itself."""
    return uri.split(":", 1)[0] in ("http", "https", "databricks", "databricks-uc", "uc")


def resolve_uri(spec: Spec | None = None, uri: str | None = None) -> str:
    """The store to read: an explicit URI, the spec's, $MLFLOW_TRACKING_URI, else the default spec's."""
    if uri:
        return uri
    if spec is not None:
        return tracking_uri(spec)
    return tracking_uri(parse_spec({}))


class Permanent(Exception):
    """An operation that can never succeed (bad value, missing run): reported, not retried."""


def is_transient(e: BaseException) -> bool:
    """Worth a retry: an outage, a lock, a timeout (not a rejected value or a missing run)."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow takes seconds to import

    if isinstance(e, Permanent):
        return False
    if isinstance(e, MlflowException):
        return e.error_code not in _PERMANENT
    return isinstance(e, (OSError, ConnectionError, TimeoutError))


def _one_line(e: BaseException) -> str:
    """An exception as one short line, secrets masked (``ConnectionError: host: refused …``)."""
    text = redact(str(e)).strip().splitlines()
    first = text[0] if text else ""
    if "NewConnectionError" in first or "Connection refused" in first:  # urllib3's long story
        url = re.search(r"API request to (\S+)", first)
        first = f"{url.group(1) if url else 'the server'}: connection refused (is the server up?)"
    return f"{type(e).__name__}: {first[:300]}"


def _search(c, exp_id: str | None, filter_string: str, order_by: list[str] | None = None,
            max_results: int = 1000):
    """Runs of one experiment matching a filter, newest first (none without an experiment)."""
    if exp_id is None:
        return []
    return c.search_runs([exp_id], filter_string=filter_string, max_results=max_results,
                         order_by=order_by or ["attributes.start_time DESC"])


def _log_batch(c, run_id: str, *, metrics: Iterable[tuple[str, float, int]] = (),
               params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
               ts: int | None = None) -> None:
    """Metrics, params and tags in as few ``log_batch`` calls as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag  # lazy: MLflow takes seconds to import

    ts = ts or _now_ms()
    ms = [Metric(k, float(v), ts, int(s)) for k, v, s in metrics]
    ps = [Param(k, _str(v)) for k, v in (params or {}).items()]
    ts_ = [RunTag(k, _str(v)) for k, v in (tags or {}).items()]
    # MLflow's per-call limits: 1000 metrics, 100 params, 100 tags.
    while ms or ps or ts_:
        c.log_batch(run_id, metrics=ms[:1000], params=ps[:100], tags=ts_[:100])
        ms, ps, ts_ = ms[1000:], ps[100:], ts_[100:]


def ensure_experiment(c, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created (artifacts under ``artifact_location``) or restored."""
    exp = c.get_experiment_by_name(name)
    if exp is None:
        from mlflow.exceptions import MlflowException  # lazy: MLflow takes seconds to import

        try:
            return c.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as e:  # another process created it meanwhile
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise e
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def git_commit() -> str | None:
    """The commit of the kdtune source tree that runs (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sha(path: str | Path) -> str:
    """A file's content hash (16 hex digits): the key of a teacher given as a plain file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
