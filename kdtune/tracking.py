"""Every MLflow call in kdtune (style rule 9).

Layout in the tracking store: experiment = ``spec.name``; one *parent* run per ``sweep run``
(tag ``kdtune.role=sweep``), one *child* run per trial (``mlflow.parentRunId``, tag
``kdtune.trial_id``), and the teacher as its own run (``kdtune.role=teacher``) that every
trial links with ``kdtune.teacher_run_id``.

One writer: only the sweep's driver writes (``SweepWriter``, fed by the Ray Tune callback in
``kdtune/tune/callbacks.py``); trials never talk to MLflow. So the sqlite default never sees two
writing processes ("database is locked"), and a remote server URI works unchanged. Writes are
*operations* (plain dicts) applied in order by one background thread, so a slow or absent
MLflow never stalls Tune's loop: a transient failure is retried with backoff; whatever is still
unsent when the sweep ends is saved to ``<run_dir>/mlflow_pending.jsonl`` and reported (never
dropped silently); the next ``sweep run --resume`` sends it. Runs are found-or-created by tag
(``kdtune.sweep_uid``, ``kdtune.trial_id``, ``kdtune.teacher_key``), so a retried trial, a
retried request or a restarted driver never makes a second run.

Read side: ``list_sweeps``, ``best_trials``, ``write_best_yaml``, ``promote`` (a trial's
checkpoint → ``mlflow.pytorch`` model in ``pt2`` format, registered, aliased) and
``download_registered_model`` (a ``models:/NAME@alias`` teacher → a kdtune checkpoint path).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from kdtune.config import Spec, SpecError, dump_spec, parse_spec
from kdtune.redact import redact, redact_data

log_ = logging.getLogger("kdtune.tracking")

ROLE, SWEEP, TRIAL, TEACHER = "kdtune.role", "sweep", "trial", "teacher"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "kdtune.trial_id"
SWEEP_TAG = "kdtune.sweep"
SWEEP_UID_TAG = "kdtune.sweep_uid"
TEACHER_RUN_TAG = "kdtune.teacher_run_id"
TEACHER_KEY_TAG = "kdtune.teacher_key"
ERROR_TAG = "kdtune.error"
RUN_ID_FILE = "mlflow_parent_run_id"
PENDING_FILE = "mlflow_pending.jsonl"
CHECKPOINT_DIR = "checkpoint"  # every kdtune run keeps its checkpoint under this artifact folder
MODEL_NAME = "student"  # the logged model's name inside a promoted run
_PARAM_MAX = 6000  # MLflow's param value limit
# Error codes that will never succeed on a retry (the rest: outage, lock, timeout → retry).
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
              "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
              "CUSTOMER_UNAUTHORIZED", "NOT_FOUND"}


# --------------------------------------------------------------------------- small helpers
def _quiet_env() -> None:
    # MLflow's own HTTP retries default to 7 with backoff factor 2 (minutes per call while a
    # server is down); the writer retries by itself, so keep each call short. User settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # "🏃 View run … at: <tracking URI>" per ended run: noise from a background writer, and the
    # URI as given (a password in it included); the sweep's last line names the store instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def client(uri: str):
    """An MlflowClient on ``uri`` for tracking and the model registry (same store)."""
    from mlflow import MlflowClient

    _quiet_env()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks", "databricks-uc", "uc")


# --------------------------------------------------------------------------- before a sweep
_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking(spec: Spec, timeout: float | None = None) -> None:
    """Refuse (SpecError, one line) a tracking store that cannot take the sweep's writes, before
    Ray starts: an http(s) server that does not answer within ``timeout`` s
    ($KDTUNE_TRACKING_CHECK_S, default 5) or refuses the credentials; a database host that
    does not accept a connection; a sqlite/file store whose folder is not a writable folder.
    Creates nothing (a missing folder is checked through its nearest existing parent)."""
    from urllib.parse import urlsplit

    uri = spec.tracking_uri()
    field = ("tracking.uri" if spec.tracking.uri else
             "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri")
    timeout = float(os.environ.get("KDTUNE_TRACKING_CHECK_S", 5)) if timeout is None else timeout
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    shown = redact(uri)
    if scheme in ("http", "https"):
        _check_server(uri, field, shown, timeout)
    elif scheme == "sqlite":
        path = uri.split("://", 1)[1].removeprefix("/")  # sqlite:///rel, sqlite:////abs
        if path and path != ":memory:":
            _check_folder(Path(path).expanduser().parent, field, shown, Path(path))
    elif scheme == "file":
        path = urlsplit(uri).path if "://" in uri else uri
        _check_folder(Path(path).expanduser(), field, shown)
    elif scheme in _DB_PORTS:
        import socket

        u = urlsplit(uri)
        host, port = u.hostname or "localhost", u.port or _DB_PORTS[scheme]
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise SpecError(f"{field}: the database at {shown} does not answer on {host}:{port} "
                            f"within {timeout:g}s ({_one_line(e)}); start it or fix the URI") from None


def _check_server(uri: str, field: str, shown: str, timeout: float) -> None:
    """One authenticated request, the way MLflow's client will make it (env credentials first,
    then a user:password in the URI; a token as a bearer)."""
    import base64
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import unquote, urlsplit

    u = urlsplit(uri)
    base = f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path.rstrip('/')}"  # no userinfo
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or (unquote(u.username) if u.username else None)
    pw = os.environ.get("MLFLOW_TRACKING_PASSWORD") or (unquote(u.password) if u.password else None)
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user and pw:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
    ctx = None
    if u.scheme == "https":
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        ctx = ssl._create_unverified_context() if insecure else ssl.create_default_context(
            cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx):
            return
    except urllib.error.HTTPError as e:
        code = e.code
    except (OSError, ValueError) as e:  # refused, unknown host, timeout, TLS
        reason = getattr(e, "reason", e)
        raise SpecError(f"{field}: the MLflow server at {shown} does not answer within {timeout:g}s "
                        f"({redact(str(reason))}); start it (e.g. `kdtune ui`) or fix the URI") from None
    if code == 401:
        how = ("refused the credentials" if user or os.environ.get("MLFLOW_TRACKING_TOKEN") else
               "needs credentials")
        raise SpecError(f"{field}: the MLflow server at {shown} {how} (HTTP 401); set "
                        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if code == 403:
        raise SpecError(f"{field}: the MLflow server at {shown} denies user {user!r} (HTTP 403); "
                        "ask its admin for access")
    raise SpecError(f"{field}: {shown} answered HTTP {code} to an MLflow API call; is it an MLflow "
                    "tracking server (the URI without /api or #/ paths)?")


def _check_folder(folder: Path, field: str, shown: str, db: Path | None = None) -> None:
    if db is not None and db.exists() and not db.is_file():
        raise SpecError(f"{field}: {shown}: {str(db)!r} exists and is not a file")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # created at the first write; check where it will be created
    if not probe.is_dir():
        raise SpecError(f"{field}: {shown}: {str(probe)!r} is not a folder, so the store "
                        f"cannot be created in {str(folder)!r}")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise SpecError(f"{field}: {shown}: the folder {str(probe)!r} is not writable "
                        f"({e.strerror or type(e).__name__}); choose another storage or tracking.uri") from None


def _str(v: Any) -> str:
    """A param/tag value as MLflow stores it: text, secrets masked, within MLflow's limit."""
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return redact(s)[:_PARAM_MAX]


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


def git_commit() -> str | None:
    """The commit of the kdtune source tree that runs (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _q(s: str) -> str:
    return s.replace("'", "\\'")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` → (name, alias, None); ``models:/NAME/3`` → (name, None, "3")."""
    body = uri.removeprefix("models:/")
    # the name becomes a cache folder (teachers/registry/NAME/vN): never a path of its own
    ok = lambda n: bool(n) and "/" not in n and "\\" not in n and n not in (".", "..")  # noqa: E731
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if ok(name) and alias:
            return name, alias, None
    else:
        name, _, version = body.partition("/")
        if ok(name) and version.isdigit():
            return name, None, version
    raise SpecError(f"teacher.checkpoint: {uri!r} is not models:/NAME@alias or models:/NAME/VERSION")


# --------------------------------------------------------------------------- the writer
class _Permanent(Exception):
    """An operation that can never succeed (bad value, missing run): reported, not retried."""


def _is_transient(e: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(e, _Permanent):
        return False
    if isinstance(e, MlflowException):
        return e.error_code not in _PERMANENT
    return isinstance(e, (OSError, ConnectionError, TimeoutError))


class SweepWriter:
    """The driver's only MLflow writer: ordered operations, one thread, retries, a spool.

    Call sites (the Tune callback) only enqueue; ``close()`` flushes, saves what is left to
    ``<run_dir>/mlflow_pending.jsonl`` and returns a one-paragraph report.
    """

    def __init__(self, spec: Spec, *, resume: bool = False, log: Callable[[str], None] = print,
                 backoff: tuple[float, float] = (1.0, 30.0), client_factory: Callable[[str], Any] | None = None):
        _quiet_env()
        self.spec = spec
        self.uri = spec.tracking_uri()
        self.resume = resume
        self.log = log
        self.run_dir = spec.run_dir
        self.backoff = backoff
        self._client_factory = client_factory or client
        self._client = None
        self.runs: dict[str, str] = {}  # "parent" | "teacher" | trial id → run id
        self.exp_id: str | None = None
        self.sent = 0
        self.rejected: list[tuple[str, str]] = []  # (what, why)
        self.last_error: str | None = None
        self._q: collections.deque[dict] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.started: set[str] = set()  # trial ids already announced (retries start again)
        self._replay = self._load_pending()

    # ---- queue
    @property
    def client(self):
        if self._client is None:
            self._client = self._client_factory(self.uri)
        return self._client

    def put(self, op: dict) -> None:
        with self._cv:
            self._q.append(op)
            self._cv.notify_all()
        if self._thread is None:
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kdtune-mlflow", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        if self._replay:
            self._send_replay()
        delay = self.backoff[0]
        while True:
            with self._cv:
                while not self._q and not self._closing and not self._stop:
                    self._cv.wait()
                if self._stop or not self._q:
                    return
                op = self._q[0]
            try:
                self._apply(op)
            except Exception as e:  # noqa: BLE001 - classify, never let the sweep die of it
                if _is_transient(e):
                    self.last_error = _one_line(e)
                    log_.warning("MLflow write %s failed (%s); retrying in %.0fs", op["op"], self.last_error, delay)
                    with self._cv:
                        self._cv.wait_for(lambda: self._stop, timeout=delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                with self._cv:
                    self._q.popleft()
                self.rejected.append((_describe(op), _one_line(e)))
                log_.error("MLflow write %s rejected: %s", _describe(op), _one_line(e))
                continue
            with self._cv:
                self._q.popleft()
                self._cv.notify_all()
            self.sent += 1
            delay = self.backoff[0]

    def close(self, timeout: float | None = None) -> str:
        """Flush (up to ``timeout`` s, default $KDTUNE_MLFLOW_FLUSH_S or 60), save the rest, report."""
        timeout = float(os.environ.get("KDTUNE_MLFLOW_FLUSH_S", 60)) if timeout is None else timeout
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
            left = list(self._q)
            self._q.clear()
        if left:
            self._save_pending(left)
        return self.report(len(left))

    def report(self, left: int = 0) -> str:
        where = f"{redact(self.uri)} (experiment {self.spec.name!r}"
        where += f", parent run {self.runs['parent']})" if "parent" in self.runs else ")"
        msg = f"MLflow: {self.sent} writes sent to {where}"
        if left:
            msg += (f"; {left} NOT sent ({self.last_error or 'unreachable'}): saved to "
                    f"{self.run_dir / PENDING_FILE}, sent by the next `kdtune sweep run --resume`")
        if self.rejected:
            msg += f"; {len(self.rejected)} rejected: " + "; ".join(f"{w}: {why}" for w, why in self.rejected[:5])
        return msg

    # ---- the pending spool (ops + the run ids they refer to)
    def _save_pending(self, ops: list[dict]) -> None:
        spool = self.run_dir / ".mlflow_spool"
        kept = []
        for op in ops:  # files may be temporary or rotated by Ray: keep a copy beside the spool
            path = Path(op["path"]) if op["op"] == "artifact" else None
            if path is not None and path.exists() and spool not in path.parents:
                dst = spool / uuid.uuid4().hex / path.name
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dst)
                    if op.get("cleanup"):
                        shutil.rmtree(path.parent, ignore_errors=True)
                    op = dict(op, path=str(dst), cleanup=True)
                except OSError as e:
                    log_.error("cannot keep %s for a later upload: %s", path, e)
            kept.append(redact_data(op))  # what MLflow would get anyway: no secret on disk
        segment = {"uri": redact(self.uri), "experiment_id": self.exp_id, "runs": dict(self.runs),
                   "ops": kept}
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / PENDING_FILE, "a") as f:
                f.write(json.dumps(segment, default=str) + "\n")
        except OSError as e:  # the last resort: say what is lost, loudly
            log_.error("cannot save %d unsent MLflow writes to %s: %s", len(kept), self.run_dir, e)

    def _load_pending(self) -> list[dict]:
        path = self.run_dir / PENDING_FILE
        if not path.is_file():
            return []
        try:
            segments = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as e:
            log_.error("cannot read %s: %s", path, e)
            return []
        path.rename(path.with_suffix(".replaying"))
        return segments

    def _send_replay(self) -> None:
        """Send segments saved by an earlier run (each with its own run ids), keep what fails."""
        own = (self.runs, self.exp_id, self.client)
        left: list[dict] = []
        for seg in self._replay:
            self.runs, self.exp_id = dict(seg.get("runs", {})), seg.get("experiment_id")
            # the writes belong to the store they were meant for, even if the spec moved since
            same = seg.get("uri", self.uri) in (self.uri, redact(self.uri))  # (saved masked)
            self._client = own[2] if same else self._client_factory(seg["uri"])
            ops = list(seg.get("ops", []))
            while ops:
                try:
                    self._apply(ops[0])
                    self.sent += 1
                except Exception as e:  # noqa: BLE001
                    if _is_transient(e):
                        self.last_error = _one_line(e)
                        break
                    self.rejected.append((_describe(ops[0]), _one_line(e)))
                ops.pop(0)
            if ops:
                left.append(dict(seg, runs=self.runs, experiment_id=self.exp_id, ops=ops))
        self.runs, self.exp_id, self._client = own
        path = self.run_dir / PENDING_FILE
        if left:
            with open(path, "a") as f:
                for seg in left:
                    f.write(json.dumps(seg, default=str) + "\n")
        else:
            self.log(f"MLflow: sent {sum(len(s.get('ops', [])) for s in self._replay)} writes saved by an earlier run")
        path.with_suffix(".replaying").unlink(missing_ok=True)
        self._replay = []

    # ---- operations (dicts: replayable from the spool file)
    def _apply(self, op: dict) -> None:
        getattr(self, f"_op_{op['op']}")(op)

    def _run(self, key: str) -> str:
        if key not in self.runs:
            raise _Permanent(f"no MLflow run for {key!r} (its creation was rejected)")
        return self.runs[key]

    def _op_parent(self, op: dict) -> None:
        c = self.client
        self.exp_id = ensure_experiment(c, op["experiment"], op.get("artifact_location"))
        run_id = op.get("run_id")
        if run_id:
            try:
                run = c.get_run(run_id)
                if run.info.experiment_id != self.exp_id:
                    run_id = None
            except Exception as e:  # noqa: BLE001
                if _is_transient(e):
                    raise
                run_id = None  # the file names a run of another store: find or create
        if not run_id:
            found = _search(c, self.exp_id, f"tags.`{SWEEP_UID_TAG}` = '{_q(op['tags'][SWEEP_UID_TAG])}'")
            if not found and op.get("resume"):
                found = _search(c, self.exp_id, f"tags.`{ROLE}` = '{SWEEP}' and "
                                f"tags.`kdtune.run_dir` = '{_q(op['tags']['kdtune.run_dir'])}'")
            run_id = found[0].info.run_id if found else None
        if run_id:
            if c.get_run(run_id).info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
        else:
            run_id = c.create_run(self.exp_id, run_name=op["name"], tags=op["tags"]).info.run_id
            _log_batch(c, run_id, params=op["params"])
            c.log_text(run_id, redact(op["spec_yaml"]), "spec.yaml")
        self.runs["parent"] = run_id
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_ID_FILE).write_text(run_id + "\n")
        except OSError as e:
            log_.warning("cannot write %s: %s", self.run_dir / RUN_ID_FILE, e)

    def _op_teacher(self, op: dict) -> None:
        c = self.client
        if op.get("model_uri"):  # a registered model: its source run is the teacher's run
            name, alias, version = parse_models_uri(op["model_uri"])
            mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
            if mv.run_id:
                self.runs["teacher"] = mv.run_id
                return
        found = _search(c, self.exp_id, f"tags.`{ROLE}` = '{TEACHER}' and "
                        f"tags.`{TEACHER_KEY_TAG}` = '{_q(op['tags'][TEACHER_KEY_TAG])}'")
        if found:
            self.runs["teacher"] = found[0].info.run_id
            return
        run_id = c.create_run(self.exp_id, run_name=op["name"], tags=op["tags"]).info.run_id
        self.runs["teacher"] = run_id
        _log_batch(c, run_id, params=op["params"],
                   metrics=[(k, v, 0) for k, v in op["metrics"].items()])
        c.log_artifact(run_id, op["path"], CHECKPOINT_DIR)
        c.set_terminated(run_id, "FINISHED")

    def _op_child(self, op: dict) -> None:
        key = op["key"]
        c = self.client
        parent = self._run("parent")
        tags = dict(op["tags"], **{PARENT_TAG: parent})
        if "teacher" in self.runs:
            tags[TEACHER_RUN_TAG] = self.runs["teacher"]
        found = self.runs.get(key) or next(
            (r.info.run_id for r in _search(c, self.exp_id, f"tags.`{PARENT_TAG}` = '{parent}' and "
                                            f"tags.`{TRIAL_ID_TAG}` = '{_q(op['trial_id'])}'")), None)
        if found:  # a retried trial, a restarted driver, or a resent request
            self.runs[key] = found
            if c.get_run(found).info.status != "RUNNING":
                c.update_run(found, status="RUNNING")
            return
        run_id = c.create_run(self.exp_id, run_name=op["name"], tags=tags).info.run_id
        self.runs[key] = run_id
        _log_batch(c, run_id, params=op["params"])
        c.log_text(run_id, redact(op["config_yaml"]), "config.yaml")
        c.log_text(run_id, redact(op["spec_yaml"]), "spec.yaml")

    def _op_log(self, op: dict) -> None:
        _log_batch(self.client, self._run(op["key"]), metrics=op.get("metrics", ()),
                   params=op.get("params", {}), tags=op.get("tags", {}), ts=op.get("ts"))

    def _op_text(self, op: dict) -> None:
        self.client.log_text(self._run(op["key"]), redact(op["text"]), op["file"])

    def _op_artifact(self, op: dict) -> None:
        path = Path(op["path"])
        if not path.exists():
            raise _Permanent(f"{path} no longer exists")
        self.client.log_artifact(self._run(op["key"]), str(path), op.get("dir"))
        if op.get("cleanup"):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _op_end(self, op: dict) -> None:
        self.client.set_terminated(self._run(op["key"]), op["status"])

    def _op_settle(self, op: dict) -> None:
        """A trial's run made whole from its full result history (after a driver crash):
        found or created, every (metric, step) it lacks logged once, and, when ``status`` is
        given and the run is not already ended, tagged, checkpointed and ended."""
        c = self.client
        key = op["key"]
        parent = self._run("parent")
        found = self.runs.get(key) or next(
            (r.info.run_id for r in _search(c, self.exp_id, f"tags.`{PARENT_TAG}` = '{parent}' and "
                                            f"tags.`{TRIAL_ID_TAG}` = '{_q(op['trial_id'])}'")), None)
        if found is None:
            self._op_child(dict(op, op="child", tags=op["child_tags"]))
            found = self.runs[key]
        self.runs[key] = found
        latest: dict[tuple[str, int], float] = {}
        for k, v, step in op["metrics"]:
            latest[(k, int(step))] = float(v)  # an epoch run twice (a restart): its last value
        have: dict[str, set[int]] = {}
        for k in {k for k, _ in latest}:
            have[k] = {m.step for m in c.get_metric_history(found, k)}
        missing = [(k, v, step) for (k, step), v in latest.items() if step not in have[k]]
        _log_batch(c, found, metrics=missing, ts=op.get("ts"))
        status = op.get("status")
        if not status or c.get_run(found).info.status in ("FINISHED", "FAILED"):
            return
        _log_batch(c, found, tags=op.get("tags", {}))
        ckpt = op.get("checkpoint")
        if ckpt and Path(ckpt).is_file() and run_checkpoint(c, found) is None:
            c.log_artifact(found, ckpt, CHECKPOINT_DIR)
        c.set_terminated(found, status)

    # ---- what the callback calls (all non-blocking)
    def start_sweep(self) -> None:
        spec = self.spec
        run_id = None
        if self.resume and (self.run_dir / RUN_ID_FILE).is_file():
            run_id = (self.run_dir / RUN_ID_FILE).read_text().strip() or None
        params = {k: v for k, v in flatten(spec.model_dump(mode="json")).items()}
        from kdtune import __version__

        tags = {ROLE: SWEEP, SWEEP_TAG: spec.name, SWEEP_UID_TAG: uuid.uuid4().hex,
                "kdtune.dataset": spec.data.name, "kdtune.method": "+".join(spec.methods),
                "kdtune.version": __version__, "kdtune.run_dir": str(self.run_dir),
                "kdtune.seed": str(spec.seed), "kdtune.search_seed": str(spec.search.seed),
                "kdtune.split_seed": str(spec.data.split_seed), "kdtune.metric": spec.metric,
                "kdtune.mode": spec.mode}
        commit = git_commit()
        if commit:
            tags["kdtune.git_commit"] = tags["mlflow.source.git.commit"] = commit
        self.put({"op": "parent", "experiment": spec.name, "resume": self.resume, "run_id": run_id,
                  "artifact_location": None if is_remote(self.uri) else
                  f"{spec.artifact_root().rstrip('/')}/{spec.name}",
                  "name": f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", "tags": tags,
                  "params": params, "spec_yaml": dump_spec(spec)})

    def teacher(self, artifact: Any) -> None:
        """Record the teacher (a ``TeacherArtifact``) as its own run, found again by its key."""
        spec = self.spec
        ckpt = spec.teacher.checkpoint
        if ckpt and ckpt.startswith("models:/"):
            self.put({"op": "teacher", "model_uri": ckpt, "name": f"teacher {ckpt}",
                      "tags": {ROLE: TEACHER, SWEEP_TAG: spec.name, TEACHER_KEY_TAG: ckpt},
                      "params": {"checkpoint": ckpt}, "metrics": {}, "path": str(artifact.path)})
            return
        key = artifact.meta.get("key") or "file:" + _sha(artifact.path)
        meta = artifact.meta
        params = {"model": meta.get("model", spec.teacher.model), "dataset": meta.get("dataset", spec.data.name),
                  "classes": meta.get("classes"), "epochs": meta.get("epochs"), "kwargs": meta.get("kwargs"),
                  "checkpoint": ckpt, "key": key}
        metrics = {k: float(meta[k]) for k in ("test_acc", "val_acc", "seconds")
                   if isinstance(meta.get(k), (int, float))}
        self.put({"op": "teacher", "name": f"teacher {params['model']} {key[:8]}",
                  "tags": {ROLE: TEACHER, SWEEP_TAG: spec.name, TEACHER_KEY_TAG: key},
                  "params": {k: v for k, v in params.items() if v is not None},
                  "metrics": metrics, "path": str(artifact.path)})

    def trial_start(self, trial_id: str, name: str, config: dict[str, Any],
                    spec_yaml: str | None = None) -> None:
        """The trial's child run; ``spec_yaml``: the spec that reproduces it (params fixed)."""
        if trial_id in self.started:
            return  # a retry of the same trial (max_failures) or a resumed pause
        self.started.add(trial_id)
        spec_yaml = spec_yaml or dump_spec(self.spec.model_copy(update={"params": dict(config)}))
        self.put({"op": "child", "key": trial_id, "trial_id": trial_id, "name": name,
                  "tags": {ROLE: TRIAL, TRIAL_ID_TAG: trial_id, SWEEP_TAG: self.spec.name,
                           "kdtune.method": str(config.get("method", "+".join(self.spec.methods)))},
                  "params": {k: v for k, v in flatten(dict(config)).items()},
                  "config_yaml": yaml.safe_dump(_plain(config), sort_keys=False),
                  "spec_yaml": spec_yaml})

    def trial_metrics(self, trial_id: str, metrics: Iterable[tuple[str, float, int]]) -> None:
        ms = [(k, float(v), int(s)) for k, v, s in metrics]
        if ms:
            self.put({"op": "log", "key": trial_id, "metrics": ms, "ts": _now_ms()})

    def trial_tags(self, trial_id: str, tags: dict[str, Any]) -> None:
        self.put({"op": "log", "key": trial_id, "tags": {k: _str(v) for k, v in tags.items()}})

    def trial_text(self, trial_id: str, text: str, file: str) -> None:
        self.put({"op": "text", "key": trial_id, "text": text, "file": file})

    def trial_checkpoint(self, trial_id: str, path: str | Path, *, cleanup: bool = False) -> None:
        self.put({"op": "artifact", "key": trial_id, "path": str(path), "dir": CHECKPOINT_DIR,
                  "cleanup": cleanup})

    def trial_end(self, trial_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            self.trial_tags(trial_id, {ERROR_TAG: reason})
        self.put({"op": "end", "key": trial_id, "status": status})

    def trial_settle(self, trial_id: str, name: str, config: dict[str, Any],
                     metrics: Iterable[tuple[str, float, int]], *, status: str | None = None,
                     tags: dict[str, Any] | None = None, checkpoint: str | None = None,
                     spec_yaml: str | None = None) -> None:
        """Fill a trial's run from its whole history (see ``_op_settle``); with ``status``, end
        it too unless it already ended. Idempotent: safe to send after every driver restart."""
        self.started.add(trial_id)
        spec_yaml = spec_yaml or dump_spec(self.spec.model_copy(update={"params": dict(config)}))
        self.put({"op": "settle", "key": trial_id, "trial_id": trial_id, "name": name,
                  "tags": {k: _str(v) for k, v in (tags or {}).items()},
                  "child_tags": {ROLE: TRIAL, TRIAL_ID_TAG: trial_id, SWEEP_TAG: self.spec.name,
                                 "kdtune.method": str(config.get("method", "+".join(self.spec.methods)))},
                  "params": {k: v for k, v in flatten(dict(config)).items()},
                  "config_yaml": yaml.safe_dump(_plain(config), sort_keys=False),
                  "spec_yaml": spec_yaml, "status": status, "checkpoint": checkpoint,
                  "metrics": [(k, float(v), int(st)) for k, v, st in metrics], "ts": _now_ms()})

    def end_sweep(self, status: str = "FINISHED") -> None:
        self.put({"op": "end", "key": "parent", "status": status})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """A config as plain YAML-able values (numpy scalars → Python)."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
            v = v.item()
        out[k] = _plain(v) if isinstance(v, dict) else v
    return out


def _sha(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _one_line(e: BaseException) -> str:
    text = redact(str(e)).strip().splitlines()
    first = text[0] if text else ""
    if "NewConnectionError" in first or "Connection refused" in first:  # urllib3's long story
        url = re.search(r"API request to (\S+)", first)
        first = f"{url.group(1) if url else 'the server'}: connection refused (is the server up?)"
    return f"{type(e).__name__}: {first[:300]}"


def _describe(op: dict) -> str:
    return f"{op['op']}({op.get('key', '')})"


def _search(c, exp_id: str | None, filter_string: str, order_by: list[str] | None = None,
            max_results: int = 1000):
    if exp_id is None:
        return []
    return c.search_runs([exp_id], filter_string=filter_string, max_results=max_results,
                         order_by=order_by or ["attributes.start_time DESC"])


def _log_batch(c, run_id: str, *, metrics: Iterable[tuple[str, float, int]] = (),
               params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
               ts: int | None = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

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
        from mlflow.exceptions import MlflowException

        try:
            return c.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as e:  # another process created it meanwhile
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise e
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


# --------------------------------------------------------------------------- read side
def resolve_uri(spec: Spec | None = None, uri: str | None = None) -> str:
    """The store to read: an explicit URI, the spec's, $MLFLOW_TRACKING_URI, else the default spec's."""
    if uri:
        return uri
    if spec is not None:
        return spec.tracking_uri()
    return parse_spec({}).tracking_uri()


def list_sweeps(uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Parent runs (newest first): experiment, run id, start, status, trials, best value."""
    c = client(uri)
    exps = [e for e in c.search_experiments() if name is None or e.name == name]
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    parents = c.search_runs(list(names), filter_string=f"tags.`{ROLE}` = '{SWEEP}'",
                            order_by=["attributes.start_time DESC"], max_results=1000)
    out = []
    for p in parents:
        metric = p.data.tags.get("kdtune.metric", "val_acc")
        mode = p.data.tags.get("kdtune.mode", "max")
        kids = _children(c, p)
        vals = [r.data.metrics[metric] for r in kids if _finite(r.data.metrics.get(metric))]
        out.append({"sweep": names[p.info.experiment_id], "run_id": p.info.run_id,
                    "run_name": p.info.run_name, "started": _iso(p.info.start_time),
                    "status": p.info.status, "trials": len(kids),
                    "failed": sum(r.info.status == "FAILED" for r in kids), "metric": metric,
                    "best": (max(vals) if mode == "max" else min(vals)) if vals else None})
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _iso(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else None


def _children(c, parent) -> list:
    return c.search_runs([parent.info.experiment_id],
                         filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                         max_results=10000)


def find_sweep(c, sweep: str | None = None):
    """The newest parent run, in experiment ``sweep`` (a name) or in the whole store."""
    if sweep:
        exp = c.get_experiment_by_name(sweep)
        if exp is None:
            raise SpecError(f"--sweep: no experiment {sweep!r} in the tracking store "
                            "(see `kdtune sweep list`)")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string=f"tags.`{ROLE}` = '{SWEEP}'",
                         order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        raise SpecError(f"no sweep{' ' + repr(sweep) if sweep else ''} in the tracking store "
                        "(run `kdtune sweep run SPEC` first)")
    return runs[0]


def best_trials(uri: str, sweep: str | None = None, top: int = 1) -> dict[str, Any]:
    """The sweep's trials ranked by its metric at each trial's last reported epoch.

    MLflow's ``metrics.<name>`` of a run is its latest value (the highest step = the last
    epoch), which is exactly "the metric at the trial's last reported epoch".
    """
    c = client(uri)
    parent = find_sweep(c, sweep)
    metric = parent.data.tags.get("kdtune.metric", "val_acc")
    mode = parent.data.tags.get("kdtune.mode", "max")
    kids = [r for r in _children(c, parent) if _finite(r.data.metrics.get(metric))]
    # ties: the earlier trial first (by its number, kd_003 → 3), as Tune's result grid orders them
    kids.sort(key=lambda r: (r.data.metrics[metric] * (-1 if mode == "max" else 1),
                             _trial_number(r.info.run_name), r.info.start_time))
    exp = c.get_experiment(parent.info.experiment_id)
    rows = []
    for i, r in enumerate(kids[: max(top, 0)]):
        rows.append({"rank": i + 1, "run_id": r.info.run_id, "trial_id": r.data.tags.get(TRIAL_ID_TAG),
                     "run_name": r.info.run_name, "status": r.info.status, metric: r.data.metrics[metric],
                     "value": r.data.metrics[metric], "test_acc": r.data.metrics.get("test_acc"),
                     "epoch": _last_step(c, r, metric), "params": _typed(r.data.params),
                     "teacher_run_id": r.data.tags.get(TEACHER_RUN_TAG)})
    return {"sweep": exp.name, "parent_run_id": parent.info.run_id, "metric": metric, "mode": mode,
            "tracking_uri": uri, "run_dir": parent.data.tags.get("kdtune.run_dir"),
            "trials": len(_children(c, parent)), "ranked": len(kids), "top": rows}


def _trial_number(name: str | None) -> int:
    tail = (name or "").rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30


def _last_step(c, run, metric: str) -> int | None:
    hist = c.get_metric_history(run.info.run_id, metric)
    return max((m.step for m in hist), default=None)


def _typed(params: dict[str, str]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k] = v
    return out


def _read_text(c, run_id: str, path: str) -> str | None:
    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(c.download_artifacts(run_id, path, d)).read_text()
    except Exception:  # noqa: BLE001 - an absent artifact
        return None


def run_spec(uri: str, run_id: str) -> Spec | None:
    """The spec a run was made with (a trial's spec has its params fixed)."""
    text = _read_text(client(uri), run_id, "spec.yaml")
    if text is None:
        return None
    return parse_spec(yaml.safe_load(text))


def write_best_yaml(uri: str, best: dict[str, Any], path: str | Path | None = None) -> Path | None:
    """best.yaml beside the sweep's results (``<storage>/<name>/best.yaml``): the full spec with
    the best trial's parameters fixed, i.e. the ``spec.yaml`` its run carries (made by the sweep's
    own ``kdtune.tune.run.best_spec``, so ``sweep run`` and ``best`` write the same spec)."""
    if not best["top"]:
        return None
    top = best["top"][0]
    text = _read_text(client(uri), top["run_id"], "spec.yaml")
    if text is None:
        return None
    run_dir = best.get("run_dir")
    if not run_dir or Path(run_dir).name != best["sweep"]:  # a tag is data: <storage>/<sweep> only
        run_dir = str(parse_spec(yaml.safe_load(text)).run_dir)
    target = Path(path) if path else Path(run_dir) / "best.yaml"
    if "://" in str(target):
        return None  # remote storage: the run's spec.yaml artifact is the copy
    header = (f"# best trial of sweep {best['sweep']}: {top['run_name']}, {best['metric']} "
              f"{top['value']:.4f} at epoch {top['epoch']} (its last reported epoch)\n"
              f"# MLflow run {top['run_id']} in {uri}\n"
              f"# reproduce: kdtune train {target}\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + text)
    return target


# --------------------------------------------------------------------------- checkpoints
def run_checkpoint(c, run_id: str) -> str | None:
    """The artifact path of a run's kdtune checkpoint (``checkpoint/*.pt``), or None."""
    try:
        files = c.list_artifacts(run_id, CHECKPOINT_DIR)
    except Exception:  # noqa: BLE001
        return None
    pts = sorted(f.path for f in files if not f.is_dir and f.path.endswith(".pt"))
    return next((p for p in pts if p.endswith("/checkpoint.pt")), pts[0] if pts else None)


def download_registered_model(uri: str, spec: Spec) -> Path:
    """``models:/NAME@alias`` (or ``/VERSION``) → a local kdtune checkpoint for ``ensure_teacher``.

    A promoted model carries its kdtune checkpoint among its ``extra_files``; otherwise the
    version's source run's ``checkpoint/`` artifact is used (e.g. a registered teacher run).
    Cached per version under ``<storage>/teachers/registry/``, so trials read it by path.
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(uri)
    c = client(spec.tracking_uri())
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException as e:
        raise SpecError(f"teacher.checkpoint: {uri!r} not found in {spec.tracking_uri()} "
                        f"({_one_line(e)})") from None
    folder = Path(spec.storage) / "teachers" / "registry" / name / f"v{mv.version}"
    path = folder / "checkpoint.pt"
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as d:
        found = None
        try:
            local = Path(_download(f"models:/{name}/{mv.version}", d, spec.tracking_uri()))
            found = next(iter(sorted(local.rglob("extra_files/*.pt"))), None)
        except MlflowException:
            pass
        if found is None and mv.run_id and (art := run_checkpoint(c, mv.run_id)):
            found = Path(c.download_artifacts(mv.run_id, art, d))
        if found is None:
            raise SpecError(f"teacher.checkpoint: {uri!r} (version {mv.version}) holds no kdtune "
                            "checkpoint; register models with `kdtune promote`")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        shutil.copy2(found, tmp)
        tmp.replace(path)  # atomic: concurrent readers never see half a file
    (folder / "source.json").write_text(json.dumps({"uri": uri, "name": name, "version": mv.version,
                                                    "run_id": mv.run_id}, indent=2))
    return path


def _download(artifact_uri: str, dst: str, tracking_uri: str) -> str:
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst,
                                               tracking_uri=tracking_uri)


# --------------------------------------------------------------------------- promote
def promote(uri: str, *, sweep: str | None = None, run_id: str | None = None,
            model_name: str | None = None, alias: str = "champion",
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Register a run's student (default: the newest sweep's best trial) and point ``alias`` at it.

    The model is logged with ``mlflow.pytorch.log_model`` in ``pt2`` format (torch.export: a
    graph and weights, loaded without unpickling code) with an input example and signature;
    the kdtune checkpoint rides along as an extra file so the version can serve as a teacher.
    A run without a checkpoint raises SpecError before anything is written.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    _quiet_env()
    c = client(uri)
    value = None
    if run_id:
        try:
            run = c.get_run(run_id)
        except MlflowException:
            raise SpecError(f"--run-id: no run {run_id!r} in {uri}") from None
    else:
        best = best_trials(uri, sweep, top=1)
        if not best["top"]:
            raise SpecError(f"sweep {best['sweep']!r}: no trial reported {best['metric']} yet: nothing to promote")
        run = c.get_run(best["top"][0]["run_id"])
        value = best["top"][0]["value"]
    rid = run.info.run_id
    art = run_checkpoint(c, rid)
    if art is None:
        raise SpecError(f"run {rid} ({run.info.run_name}) has no checkpoint artifact "
                        f"({CHECKPOINT_DIR}/*.pt): nothing promoted")
    exp = c.get_experiment(run.info.experiment_id)
    tags = run.data.tags
    parent_id = tags.get(PARENT_TAG)
    name = model_name or (tags.get(SWEEP_TAG) or exp.name)

    import torch
    from kdtune.engine import load_student, refusal

    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(c.download_artifacts(rid, art, d))
        try:
            model = load_student(ckpt, "cpu")  # weights only: a planted pickle is refused
        except Exception as e:  # noqa: BLE001 - a foreign or damaged file
            raise SpecError(f"run {rid}: {art} is not a loadable kdtune checkpoint ({refusal(e)})") from None
        if Path(ckpt).name != "checkpoint.pt":  # one name inside every model (teacher.pt → checkpoint.pt)
            ckpt = Path(shutil.copy2(ckpt, Path(d) / "checkpoint.pt"))
        example = _input_example(uri, run, model)
        with torch.no_grad():
            out = model(torch.from_numpy(example)).float().numpy()
        from mlflow.models import infer_signature

        signature = infer_signature(example, out)
        lineage = {SWEEP_TAG: name if not tags.get(SWEEP_TAG) else tags[SWEEP_TAG],
                   "kdtune.sweep_run_id": parent_id or "", "kdtune.trial_run_id": rid,
                   TRIAL_ID_TAG: tags.get(TRIAL_ID_TAG, ""), TEACHER_RUN_TAG: tags.get(TEACHER_RUN_TAG, ""),
                   "kdtune.method": tags.get("kdtune.method", ""), "kdtune.role": tags.get(ROLE, ""),
                   "kdtune.experiment": exp.name}
        lineage.update({f"param.{k}": v for k, v in run.data.params.items()})
        for m in ("val_acc", "test_acc", "params_count"):
            if m in run.data.metrics:
                lineage[f"metric.{m}"] = run.data.metrics[m]
        lineage = {k: _str(v) for k, v in lineage.items() if v != ""}

        # the fluent API logs the model into the run's experiment (a LoggedModel + the run's
        # outputs); the process's tracking URIs are put back afterwards
        prev = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            info = mlflow.pytorch.log_model(
                model, name=MODEL_NAME, input_example=example, signature=signature,
                serialization_format="pt2", extra_files=[str(ckpt)], run_id=rid,
                # given, not inferred: inference loads the model in a subprocess (slow)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"],
                tags=lineage)
            mv = mlflow.register_model(info.model_uri, name, tags=lineage)
        finally:
            mlflow.set_tracking_uri(prev[0])
            mlflow.set_registry_uri(prev[1])
    c.set_registered_model_alias(name, alias, mv.version)
    c.set_tag(rid, "kdtune.promoted", f"{name}/{mv.version}@{alias}")
    result = {"name": name, "version": mv.version, "alias": alias, "uri": f"models:/{name}@{alias}",
              "run_id": rid, "model_uri": info.model_uri, "value": value,
              "test_acc": run.data.metrics.get("test_acc")}
    log(f"promoted run {rid} ({run.info.run_name}) → models:/{name}/{mv.version}, alias @{alias}")
    return result


def _input_example(uri: str, run, model) -> "Any":
    """A few real test images (preprocessed as in training) when the run's spec loads, else noise."""
    import numpy as np

    spec = None
    for rid in (run.info.run_id, run.data.tags.get(PARENT_TAG)):
        if rid and spec is None:
            try:
                spec = run_spec(uri, rid)
            except Exception:  # noqa: BLE001
                spec = None
    arch = getattr(model, "spec", {}) or {}
    if spec is not None:
        try:
            from kdtune.trial import student_data
            from kdtune.data import TensorLoader

            data = student_data(spec)
            x, _, _ = next(iter(TensorLoader(data.test, data, 4, shuffle=False, device="cpu")))
            return x.float().numpy()
        except Exception:  # noqa: BLE001 - data not reachable here: shapes are enough
            pass
    c, s = int(arch.get("in_channels", 3)), int(arch.get("input_size", 32))
    return np.random.default_rng(0).standard_normal((4, c, s, s)).astype("float32")


# --------------------------------------------------------------------------- ui
def ui_command(uri: str, port: int, artifacts: str | None = None, workers: int = 1) -> list[str]:
    """``mlflow server`` on 127.0.0.1 for a local store (artifacts served from ``artifacts``)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    return cmd
