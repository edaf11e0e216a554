"""``SweepWriter``: the sweep driver's only MLflow writer.

Call sites (the Tune callback in ``kdtune/tune/callbacks.py``) only enqueue typed operations
(``kdtune.tracking.ops``); background threads apply them in order per run, so a slow or
absent MLflow never stalls Tune's loop. Metric writes of one run queued behind each other go
out as one ``log_batch`` call; a tracking server gets several lanes (threads, one run at a time
each); and the queue is bounded: past ``max_queue`` operations the producer waits briefly for
room (``kdtune.tracking.queue``). A transient failure is retried
with backoff; a permanent one is reported and skipped; whatever is unsent at ``close()`` is
saved to the pending spool ``<run_dir>/mlflow_pending.jsonl`` and sent by the next
``sweep run --resume``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import yaml

import kdtune.tracking.spool as spool
from kdtune import __version__
from kdtune.redact import redact
from kdtune.spec import Spec, dump_spec
from kdtune.spec.paths import artifact_root, run_dir, tracking_uri
from kdtune.tracking.client import (Permanent, _log_batch, _one_line, _search, _sha, client,
                                    ensure_experiment, git_commit, is_remote, is_transient,
                                    quiet_env)
from kdtune.tracking.ops import (Artifact, End, Log, Op, RecordTeacher, Retire, Settle,
                                 StartChild, StartParent, Text)
from kdtune.tracking.orphans import retire_orphans
from kdtune.tracking.query import run_checkpoint
from kdtune.tracking.queue import Batch, OpQueue
from kdtune.tracking.registry import parse_models_uri
from kdtune.tracking.schema import (CHECKPOINT_DIR, ERROR_TAG, PARENT_TAG, PENDING_FILE, ROLE,
                                    RUN_ID_FILE, SWEEP, SWEEP_TAG, SWEEP_UID_TAG, TEACHER,
                                    TEACHER_KEY_TAG, TEACHER_RUN_TAG, TRIAL, TRIAL_ID_TAG,
                                    _now_ms, _plain, _q, _str, flatten)
from kdtune.tracking.spool import Segment
from kdtune.tracking.steps import HeldSteps

log_ = logging.getLogger("kdtune.tracking")


def _what(batch: Batch) -> str:
    """``log(t00001)``, or ``log(t00001) ×12`` for a coalesced batch: for log lines."""
    return batch.ops[0].describe() + (f" ×{len(batch.ops)}" if batch.coalesced else "")


class SweepWriter:
    """The driver's only MLflow writer: ordered operations, one thread, retries, a spool.

    Call sites (the Tune callback) only enqueue; ``close()`` flushes, saves what is left to
    ``<run_dir>/mlflow_pending.jsonl`` and returns a one-paragraph report. ``max_queue``
    (default $KDTUNE_MLFLOW_QUEUE_MAX or 10000 operations) and ``max_block_s`` (default
    $KDTUNE_MLFLOW_BLOCK_S or 2 s): the bound past which a producer waits for room, and the
    longest one call waits. ``lanes`` (default $KDTUNE_MLFLOW_LANES or 4 for a tracking
    server; always 1 for a local store, whose sqlite file takes one writer at a time): threads
    applying batches of different runs at once.
    """

    def __init__(self, spec: Spec, *, resume: bool = False, log: Callable[[str], None] = print,
                 backoff: tuple[float, float] = (1.0, 30.0), client_factory: Callable[[str], Any] | None = None,
                 max_queue: int | None = None, max_block_s: float | None = None, lanes: int | None = None):
        quiet_env()
        self.spec = spec
        self.uri = tracking_uri(spec)
        self.resume = resume
        self.log = log
        self.run_dir = run_dir(spec)
        self.backoff = backoff
        self._client_factory = client_factory or client
        self._client = None
        self.runs: dict[str, str] = {}  # "parent" | "teacher" | trial id → run id
        self.exp_id: str | None = None
        self.sent = 0
        self.rejected: list[tuple[str, str]] = []  # (what, why)
        self.last_error: str | None = None
        self.batches = 0  # batches applied (a coalesced batch is one log_batch call)
        self._queue = OpQueue(
            int(os.environ.get("KDTUNE_MLFLOW_QUEUE_MAX", 10_000)) if max_queue is None else max_queue,
            float(os.environ.get("KDTUNE_MLFLOW_BLOCK_S", 2.0)) if max_block_s is None else max_block_s)
        lanes = int(os.environ.get("KDTUNE_MLFLOW_LANES", 4)) if lanes is None else lanes
        self.lanes = max(1, lanes) if is_remote(self.uri) else 1
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()  # the earlier run's writes are replayed: lanes may start
        self._lock = threading.Lock()  # counters and the client, shared by the lanes
        self._new_parent: str | None = None  # the parent run this writer created (no children yet)
        self._tried: set[str] = set()  # trial runs whose creation was attempted
        self._held = HeldSteps()  # points of runs found again: never logged twice
        self.started: set[str] = set()  # trial ids already announced (retries start again)
        self._replay = spool.load(self.run_dir)  # writes an earlier run could not send

    # ---- queue
    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._client_factory(self.uri)
        return self._client

    def put(self, op: Op) -> None:
        """Queue ``op`` (waiting briefly for room when the queue is over its bound)."""
        self._queue.put(op)
        if not self._threads:
            self.start()

    def pending(self) -> int:
        """Operations queued and not yet applied."""
        return self._queue.pending()

    def stats(self) -> dict[str, Any]:
        """The queue's figures: operations sent, batches applied, operations coalesced into an
        earlier batch, queued now and at most, and the producers' wait for room."""
        q = self._queue
        return {"sent": self.sent, "batches": self.batches, "coalesced": q.coalesced, "lanes": self.lanes,
                "pending": q.pending(), "max_depth": q.max_depth, "blocked_s": round(q.blocked_s, 3),
                "blocked_puts": q.blocked_puts}

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._loop, args=(i,), name=f"kdtune-mlflow-{i}", daemon=True)
                             for i in range(self.lanes)]
            for t in self._threads:
                t.start()

    def _loop(self, lane: int) -> None:
        q = self._queue
        if lane == 0:
            if self._replay:  # first: it swaps the run table while it sends
                self._send_replay()
            self._ready.set()
        while not self._ready.wait(0.5):
            if q.stopped:
                return
        delay = self.backoff[0]
        while True:
            batch = q.next()
            if batch is None:
                return
            try:
                self._apply_batch(batch)
            except Exception as e:  # noqa: BLE001 - classify, never let the sweep die of it
                if is_transient(e):
                    self.last_error = _one_line(e)
                    q.set_failing(True)  # producers stop waiting for room: the spool takes it
                    log_.warning("MLflow write %s failed (%s); retrying in %.0fs", _what(batch),
                                 self.last_error, delay)
                    q.wait_stopped(delay)
                    q.release(batch)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                q.set_failing(False)
                if batch.coalesced:  # one of them is bad: send them one by one to find it
                    q.split(batch)
                    continue
                q.done(batch)
                self.rejected.append((batch.ops[0].describe(), _one_line(e)))
                log_.error("MLflow write %s rejected: %s", batch.ops[0].describe(), _one_line(e))
                continue
            q.done(batch)
            if q.failing:
                q.set_failing(False)
            with self._lock:
                self.sent += len(batch.ops)
                self.batches += 1
            delay = self.backoff[0]

    def close(self, timeout: float | None = None) -> str:
        """Flush (up to ``timeout`` s, default $KDTUNE_MLFLOW_FLUSH_S or 60), save the rest, report."""
        timeout = float(os.environ.get("KDTUNE_MLFLOW_FLUSH_S", 60)) if timeout is None else timeout
        self._queue.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        left = [op for op in self._queue.stop() if not isinstance(op, Retire)]  # (see Retire)
        if left:
            spool.save(self.run_dir, Segment(self.uri, self.exp_id, dict(self.runs), left))
        return self.report(len(left))

    def report(self, left: int = 0) -> str:
        where = f"{redact(self.uri)} (experiment {self.spec.name!r}"
        where += f", parent run {self.runs['parent']})" if "parent" in self.runs else ")"
        msg = f"MLflow: {self.sent} writes sent to {where}"
        if left:
            msg += (f"; {left} NOT sent ({self.last_error or 'unreachable'}): saved to "
                    f"{self.run_dir / PENDING_FILE}, sent by the next `kdtune sweep run --resume`")
        q = self._queue
        if q.blocked_puts:
            msg += (f"; Tune waited {q.blocked_s:.1f} s in all for the writer to catch up "
                    f"(more than {q.max_ops} writes queued)")
        if self.rejected:
            msg += f"; {len(self.rejected)} rejected: " + "; ".join(f"{w}: {why}" for w, why in self.rejected[:5])
        return msg

    # ---- the pending spool (its file format: kdtune/tracking/spool.py)
    def _send_replay(self) -> None:
        """Send segments saved by an earlier run (each with its own run ids), keep what fails."""
        own = (self.runs, self.exp_id, self.client)
        left: list[Segment] = []
        for seg in self._replay:
            self.runs, self.exp_id = dict(seg.runs), seg.experiment_id
            # the writes belong to the store they were meant for, even if the spec moved since
            same = seg.uri is None or seg.uri in (self.uri, redact(self.uri))  # (saved masked)
            self._client = own[2] if same else self._client_factory(seg.uri)
            ops = list(seg.ops)
            while ops:
                try:
                    self._apply(ops[0])
                    self.sent += 1
                except Exception as e:  # noqa: BLE001
                    if is_transient(e):
                        self.last_error = _one_line(e)
                        break
                    self.rejected.append((ops[0].describe(), _one_line(e)))
                ops.pop(0)
            if ops:
                left.append(Segment(seg.uri, self.exp_id, self.runs, ops))
        self.runs, self.exp_id, self._client = own
        if left:
            spool.append(self.run_dir, left)
        else:
            self.log(f"MLflow: sent {sum(len(s.ops) for s in self._replay)} writes saved by an earlier run")
        spool.finish(self.run_dir)
        self._replay = []

    # ---- applying operations (the writer thread only)
    def _apply_batch(self, batch: Batch) -> None:
        if batch.coalesced:
            self._send_logs(batch)
        else:
            self._apply(batch.ops[0])

    def _apply(self, op: Op) -> None:
        self._HANDLERS[type(op)](self, op)

    def _run(self, key: str) -> str:
        if key not in self.runs:
            raise Permanent(f"no MLflow run for {key!r} (its creation was rejected)")
        return self.runs[key]

    def _start_parent(self, op: StartParent) -> None:
        c = self.client
        self.exp_id = ensure_experiment(c, op.experiment, op.artifact_location)
        run_id = op.run_id
        if run_id:
            try:
                run = c.get_run(run_id)
                if run.info.experiment_id != self.exp_id:
                    run_id = None
            except Exception as e:  # noqa: BLE001
                if is_transient(e):
                    raise
                run_id = None  # the file names a run of another store: find or create
        if not run_id:
            found = _search(c, self.exp_id, f"tags.`{SWEEP_UID_TAG}` = '{_q(op.tags[SWEEP_UID_TAG])}'")
            if not found and op.resume:
                found = _search(c, self.exp_id, f"tags.`{ROLE}` = '{SWEEP}' and "
                                f"tags.`kdtune.run_dir` = '{_q(op.tags['kdtune.run_dir'])}'")
            run_id = found[0].info.run_id if found else None
        if run_id:
            if c.get_run(run_id).info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
        else:
            run_id = c.create_run(self.exp_id, run_name=op.name, tags=op.tags).info.run_id
            self._new_parent = run_id
            _log_batch(c, run_id, params=op.params)
            c.log_text(run_id, redact(op.spec_yaml), "spec.yaml")
        self.runs["parent"] = run_id
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_ID_FILE).write_text(run_id + "\n")
        except OSError as e:
            log_.warning("cannot write %s: %s", self.run_dir / RUN_ID_FILE, e)

    def _record_teacher(self, op: RecordTeacher) -> None:
        c = self.client
        if op.model_uri:  # a registered model: its source run is the teacher's run
            name, alias, version = parse_models_uri(op.model_uri)
            mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
            if mv.run_id:
                self.runs["teacher"] = mv.run_id
                return
        found = _search(c, self.exp_id, f"tags.`{ROLE}` = '{TEACHER}' and "
                        f"tags.`{TEACHER_KEY_TAG}` = '{_q(op.tags[TEACHER_KEY_TAG])}'")
        if found:
            self.runs["teacher"] = found[0].info.run_id
            return
        run_id = c.create_run(self.exp_id, run_name=op.name, tags=op.tags).info.run_id
        self.runs["teacher"] = run_id
        _log_batch(c, run_id, params=op.params, metrics=[(k, v, 0) for k, v in op.metrics.items()])
        c.log_artifact(run_id, op.path, CHECKPOINT_DIR)
        c.set_terminated(run_id, "FINISHED")

    def _find_child(self, key: str, trial_id: str, parent: str) -> str | None:
        """The trial's run: known to this writer, else found under the parent by its trial id.
        Under a parent this writer created there is nothing to find, unless an earlier attempt
        (a request that failed, maybe after the server acted on it) created the run."""
        if key in self.runs:
            return self.runs[key]
        first = key not in self._tried
        self._tried.add(key)
        if first and parent == self._new_parent:
            return None  # one search per trial saved: a fresh sweep's only read
        return next(
            (r.info.run_id for r in _search(self.client, self.exp_id, f"tags.`{PARENT_TAG}` = '{parent}' and "
                                            f"tags.`{TRIAL_ID_TAG}` = '{_q(trial_id)}'")), None)

    def _start_child(self, op: StartChild) -> None:
        c = self.client
        parent = self._run("parent")
        tags = dict(op.tags, **{PARENT_TAG: parent})
        if "teacher" in self.runs:
            tags[TEACHER_RUN_TAG] = self.runs["teacher"]
        found = self._find_child(op.key, op.trial_id, parent)
        if found:  # a retried trial, a restarted driver, or a resent request
            self.runs[op.key] = found
            run = c.get_run(found)
            self._held.load(op.key, c, run)
            if run.info.status != "RUNNING":
                c.update_run(found, status="RUNNING")
            return
        run_id = c.create_run(self.exp_id, run_name=op.name, tags=tags).info.run_id
        self.runs[op.key] = run_id
        _log_batch(c, run_id, params=op.params)
        c.log_text(run_id, redact(op.config_yaml), "config.yaml")
        c.log_text(run_id, redact(op.spec_yaml), "spec.yaml")

    def _send_log(self, op: Log) -> None:
        metrics = self._held.new(op.key, op.metrics)
        _log_batch(self.client, self._run(op.key), metrics=metrics, params=op.params, tags=op.tags, ts=op.ts)
        self._held.took(op.key, metrics)

    def _send_logs(self, batch: Batch) -> None:
        """``Log`` operations of one run in one ``log_batch`` call (the queue keeps a batch
        within MLflow's limits), each metric point at the time it was reported."""
        from mlflow.entities import Metric, Param, RunTag  # lazy: MLflow takes seconds to import

        now = _now_ms()
        ops = [op for op in batch.ops if isinstance(op, Log)]
        points = self._held.new(batch.key, [(k, v, s, op.ts or now) for op in ops for k, v, s in op.metrics])
        metrics = [Metric(k, v, ts, s) for k, v, s, ts in points]
        params = [Param(k, _str(v)) for op in ops for k, v in op.params.items()]
        tags = [RunTag(k, _str(v)) for op in ops for k, v in op.tags.items()]
        if metrics or params or tags:
            self.client.log_batch(self._run(batch.key), metrics=metrics, params=params, tags=tags)
        self._held.took(batch.key, [(k, v, s) for k, v, s, _ in points])

    def _send_text(self, op: Text) -> None:
        self.client.log_text(self._run(op.key), redact(op.text), op.file)

    def _send_artifact(self, op: Artifact) -> None:
        path = Path(op.path)
        if not path.exists():
            raise Permanent(f"{path} no longer exists")
        self.client.log_artifact(self._run(op.key), str(path), op.dir)
        if op.cleanup:
            shutil.rmtree(path.parent, ignore_errors=True)

    def _end_run(self, op: End) -> None:
        self.client.set_terminated(self._run(op.key), op.status)

    def _settle(self, op: Settle) -> None:
        """A trial's run made whole from its full result history (after a driver crash):
        found or created, every (metric, step) it lacks logged once, and, when ``status`` is
        given and the run is not already ended, tagged, checkpointed and ended."""
        c = self.client
        found = self._find_child(op.key, op.trial_id, self._run("parent"))
        if found is None:
            self._start_child(op.child())
            found = self.runs[op.key]
        self.runs[op.key] = found
        latest: dict[tuple[str, int], float] = {}
        for k, v, step in op.metrics:
            latest[(k, int(step))] = float(v)  # an epoch run twice (a restart): its last value
        have = {k: {m.step for m in c.get_metric_history(found, k)} for k in {k for k, _ in latest}}
        missing = [(k, v, step) for (k, step), v in latest.items() if step not in have[k]]
        self._held.took(op.key, missing)
        _log_batch(c, found, metrics=missing, ts=op.ts)
        if not op.status or c.get_run(found).info.status in ("FINISHED", "FAILED"):
            return
        _log_batch(c, found, tags=op.tags)
        if op.checkpoint and Path(op.checkpoint).is_file() and run_checkpoint(c, found) is None:
            c.log_artifact(found, op.checkpoint, CHECKPOINT_DIR)
        c.set_terminated(found, op.status)

    def _retire(self, op: Retire) -> None:
        known = set(op.known)  # and `started`, read per run: the driver thread adds to it
        retire_orphans(self.client, self.exp_id, self._run("parent"),
                       lambda tid: tid in known or tid in self.started, self.log)

    _HANDLERS: ClassVar[dict[type, Callable[[SweepWriter, Any], None]]] = {
        StartParent: _start_parent, RecordTeacher: _record_teacher, StartChild: _start_child,
        Log: _send_log, Text: _send_text, Artifact: _send_artifact, End: _end_run, Settle: _settle,
        Retire: _retire}

    # ---- what the callback calls (they only queue; past the bound they wait briefly for room)
    def start_sweep(self) -> None:
        spec = self.spec
        run_id = None
        if self.resume and (self.run_dir / RUN_ID_FILE).is_file():
            run_id = (self.run_dir / RUN_ID_FILE).read_text().strip() or None
        tags = {ROLE: SWEEP, SWEEP_TAG: spec.name, SWEEP_UID_TAG: uuid.uuid4().hex,
                "kdtune.dataset": spec.data.name, "kdtune.method": "+".join(spec.methods),
                "kdtune.version": __version__, "kdtune.run_dir": str(self.run_dir),
                "kdtune.seed": str(spec.seed), "kdtune.search_seed": str(spec.search.seed),
                "kdtune.split_seed": str(spec.data.split_seed), "kdtune.metric": spec.objective,
                "kdtune.mode": spec.direction,
                "kdtune.objectives": ",".join(f"{m}:{d}" for m, d in spec.objectives)}
        commit = git_commit()
        if commit:
            tags["kdtune.git_commit"] = tags["mlflow.source.git.commit"] = commit
        self.put(StartParent(
            experiment=spec.name, resume=self.resume, run_id=run_id,
            artifact_location=None if is_remote(self.uri) else f"{artifact_root(spec).rstrip('/')}/{spec.name}",
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags,
            params=flatten(spec.model_dump(mode="json")), spec_yaml=dump_spec(spec)))

    def teacher(self, artifact: Any) -> None:
        """Record the teacher (a ``TeacherArtifact``) as its own run, found again by its key."""
        spec = self.spec
        ckpt = spec.teacher.checkpoint
        if ckpt and ckpt.startswith("models:/"):
            self.put(RecordTeacher(model_uri=ckpt, name=f"teacher {ckpt}",
                                   tags={ROLE: TEACHER, SWEEP_TAG: spec.name, TEACHER_KEY_TAG: ckpt},
                                   params={"checkpoint": ckpt}, metrics={}, path=str(artifact.path)))
            return
        key = artifact.meta.get("key") or "file:" + _sha(artifact.path)
        meta = artifact.meta
        params = {"model": meta.get("model", spec.teacher.model), "dataset": meta.get("dataset", spec.data.name),
                  "classes": meta.get("classes"), "epochs": meta.get("epochs"), "kwargs": meta.get("kwargs"),
                  "checkpoint": ckpt, "key": key}
        metrics = {k: float(meta[k]) for k in ("test_acc", "val_acc", "seconds")
                   if isinstance(meta.get(k), (int, float))}
        self.put(RecordTeacher(name=f"teacher {params['model']} {key[:8]}",
                               tags={ROLE: TEACHER, SWEEP_TAG: spec.name, TEACHER_KEY_TAG: key},
                               params={k: v for k, v in params.items() if v is not None},
                               metrics=metrics, path=str(artifact.path)))

    def _trial_tags(self, trial_id: str, config: dict[str, Any]) -> dict[str, str]:
        return {ROLE: TRIAL, TRIAL_ID_TAG: trial_id, SWEEP_TAG: self.spec.name,
                "kdtune.method": str(config.get("method", "+".join(self.spec.methods)))}

    def trial_start(self, trial_id: str, name: str, config: dict[str, Any],
                    spec_yaml: str | None = None) -> None:
        """The trial's child run; ``spec_yaml``: the spec that reproduces it (params fixed)."""
        if trial_id in self.started:
            return  # a retry of the same trial (max_failures) or a resumed pause
        self.started.add(trial_id)
        spec_yaml = spec_yaml or dump_spec(self.spec.model_copy(update={"params": dict(config)}))
        self.put(StartChild(key=trial_id, trial_id=trial_id, name=name, tags=self._trial_tags(trial_id, config),
                            params=flatten(dict(config)),
                            config_yaml=yaml.safe_dump(_plain(config), sort_keys=False), spec_yaml=spec_yaml))

    def trial_metrics(self, trial_id: str, metrics: Iterable[tuple[str, float, int]]) -> None:
        ms = [(k, float(v), int(s)) for k, v, s in metrics]
        if ms:
            self.put(Log(key=trial_id, metrics=tuple(ms), ts=_now_ms()))

    def trial_tags(self, trial_id: str, tags: dict[str, Any]) -> None:
        self.put(Log(key=trial_id, tags={k: _str(v) for k, v in tags.items()}))

    def trial_text(self, trial_id: str, text: str, file: str) -> None:
        self.put(Text(key=trial_id, text=text, file=file))

    def trial_checkpoint(self, trial_id: str, path: str | Path, *, cleanup: bool = False) -> None:
        self.put(Artifact(key=trial_id, path=str(path), dir=CHECKPOINT_DIR, cleanup=cleanup))

    def trial_end(self, trial_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            self.trial_tags(trial_id, {ERROR_TAG: reason})
        self.put(End(key=trial_id, status=status))

    def trial_settle(self, trial_id: str, name: str, config: dict[str, Any],
                     metrics: Iterable[tuple[str, float, int]], *, status: str | None = None,
                     tags: dict[str, Any] | None = None, checkpoint: str | None = None,
                     spec_yaml: str | None = None) -> None:
        """Fill a trial's run from its whole history (see ``_settle``); with ``status``, end
        it too unless it already ended. Idempotent: safe to send after every driver restart."""
        self.started.add(trial_id)
        spec_yaml = spec_yaml or dump_spec(self.spec.model_copy(update={"params": dict(config)}))
        self.put(Settle(key=trial_id, trial_id=trial_id, name=name,
                        tags={k: _str(v) for k, v in (tags or {}).items()},
                        child_tags=self._trial_tags(trial_id, config), params=flatten(dict(config)),
                        config_yaml=yaml.safe_dump(_plain(config), sort_keys=False), spec_yaml=spec_yaml,
                        status=status, checkpoint=checkpoint, metrics=tuple(metrics), ts=_now_ms()))

    def retire_unknown(self, known: Iterable[str]) -> None:
        """After a restore: retire the trial runs of trials the restored experiment lacks."""
        self.put(Retire(key="parent", known=tuple(known)))

    def end_sweep(self, status: str = "FINISHED") -> None:
        self.put(End(key="parent", status=status))
