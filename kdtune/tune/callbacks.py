"""The sweep's MLflow logging: a Ray Tune callback in the driver feeding ``kdtune.tracking``.

Only the driver writes to MLflow (trials never do), so the sqlite default has one writer and
a remote tracking server works unchanged for trials on other nodes. Tune events become
tracking operations:

- ``setup``: the parent run (reused with ``--resume``) and the teacher's run;
- ``on_trial_start``: the trial's child run (params = its sampled config; ``config.yaml`` and
  the ``spec.yaml`` that ``kdtune train`` reproduces it with), once per trial id: a retried
  trial (``max_failures``) or a restarted driver finds its run again by the trial-id tag;
- ``on_trial_result``: every number the trial reported, at step = its main epoch; pre-stage
  terms (``stage/<name>/...``) at their own stage epoch;
- ``on_trial_complete`` / ``on_trial_error``: the trial's latest checkpoint from Tune storage
  (``trial.checkpoint``), then FINISHED or FAILED with the error's last line as ``kdtune.error``;
- ``on_experiment_end``: flush, and one line saying what was sent (and what was not);
- after a driver crash (``--resume``): trials that ended while no driver was logging, or whose
  last writes died with it, are *settled* from their ``result.json`` (every missing (metric,
  step) logged once, the run ended with the trial's status); trials that restart fill the
  holes the same way when they end; a trial that restarts from an earlier checkpoint than
  its last report (the killed driver's snapshot lagged) re-runs epochs its run already has,
  and the writer drops those points; a trial the killed driver started after its last snapshot
  is unknown to the restored experiment (Tune runs it again under a new id), so its run is
  retired: ended KILLED and soft-deleted (``kdtune.tracking.orphans``). Nothing is logged twice.

Secrets never leave through here: everything written goes through ``kdtune.redact``.
"""

from __future__ import annotations

import json
import numbers
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pyarrow.fs import LocalFileSystem
from ray.tune import Callback

from kdtune.redact import redact
from kdtune.spec.load import dump_spec, masked
from kdtune.spec.paths import CHECKPOINT
from kdtune.spec.schema import Spec
from kdtune.tracking.writer import SweepWriter
from kdtune.training.teacher import ensure_teacher, needs_teacher
from kdtune.tune._ray_compat import result_rows, trial_folder
from kdtune.tune.errors import error_reason, error_text
from kdtune.tune.naming import trial_seed
from kdtune.tune.run import best_spec, trial_name
from kdtune.tune.trainable import FATAL_KEY, INFEASIBLE_KEY, NODE_KEY

# Keys Ray adds to every result: bookkeeping, not the trial's measurements.
RAY_KEYS = frozenset({
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "done", "pid", "node_ip", "hostname", "date", "experiment_tag",
    "trial_id", "checkpoint_dir_name", "should_checkpoint", "config", "experiment_id",
    "episodes_total", "timesteps_total", "timesteps_since_restore", "warmup_time",
})


def metrics_of(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) for every number in a Tune result.

    Main epochs are logged at step = ``epoch``; a pre-stage's ``stage/<name>/<term>`` at step =
    ``stage/<name>/epoch`` (stages restart their count, and own their keys, so they never mix
    with the main curve).
    """
    main_step = result.get("epoch", result.get("training_iteration", 0))
    out = []
    for k, v in result.items():
        if k in RAY_KEYS or k == "epoch" or isinstance(v, bool) or not isinstance(v, numbers.Real):
            continue
        if k.startswith("stage/"):
            name = k.split("/")[1]
            if k.endswith("/epoch"):
                continue
            step = result.get(f"stage/{name}/epoch", 0)
        else:
            step = main_step
        out.append((k, float(v), int(step or 0)))
    return out


_LIVE_SPECS: dict[int, Spec] = {}  # unmasked specs of this process's callbacks (see __getstate__)


class MLflowCallback(Callback):
    """Logs a sweep to MLflow from the driver (see the module docstring)."""

    def __init__(self, spec: Spec, resume: bool = False, *, log: Callable[[str], None] | None = None,
                 writer: SweepWriter | None = None) -> None:
        self.spec = spec
        self.resume = resume
        self.log = log
        self.writer = writer
        self._ckpt: dict[str, Any] = {}
        self._teacher_path: str | None = None
        self._closed = False
        self._settled = False  # restored trials reconciled (once per driver)
        self._fatal = False  # a trial hit the spec's own error: the sweep ends FAILED
        self._ended: set[str] = set()  # trials already ended by their result (infeasible)

    # ---- the experiment
    def setup(self, **info) -> None:
        if self.writer is None or self._closed:  # (a second fit() with the same callback)
            self.writer = SweepWriter(self.spec, resume=self.resume, log=self._log)
            self._closed = False
        self.writer.start_sweep()
        teacher = self._teacher()
        if teacher is not None:
            self._teacher_path = str(teacher.path)
            self.writer.teacher(teacher)

    def _teacher(self):
        """The sweep's teacher: ``run_sweep`` prepared it already, so this is a cache hit."""

        if not needs_teacher(self.spec):
            return None
        try:
            return ensure_teacher(self.spec, log=lambda s: None)
        except Exception as e:  # noqa: BLE001 - tracking never stops a sweep
            self._log(f"MLflow: teacher not recorded ({type(e).__name__}: {e})")
            return None

    def on_experiment_end(self, trials, **info) -> None:
        """Tune calls this at the end, and also when the sweep is interrupted or crashes: then
        the unfinished trials and the parent end KILLED (``--resume`` sets them RUNNING again)."""
        if self.writer is None:
            return
        self._settle_restored(trials)  # (a resumed sweep with nothing left to run)
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        for t in unfinished:
            if t.trial_id in self.writer.started:
                self.writer.trial_end(t.trial_id, "KILLED")
        self.close("FAILED" if self._fatal else "KILLED" if unfinished else "FINISHED")

    def close(self, status: str = "FINISHED") -> str | None:
        """End the parent run, flush, and say what was sent (and what was not)."""
        if self._closed or self.writer is None:
            return None
        self._closed = True
        self.writer.end_sweep(status)
        report = self.writer.close()
        self._log(report)
        return report

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) with the experiment: the writer
        # (a thread, a client) and checkpoint handles belong to this process only; the spec
        # goes masked (`--resume` replaces these callbacks, so no secret needs to be on disk).
        _LIVE_SPECS[id(self.spec)] = self.spec  # a copy made in this process gets it back
        return dict(self.__dict__, spec=masked(self.spec), _spec_id=id(self.spec), writer=None, _ckpt={},
                    _closed=False, _settled=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = _LIVE_SPECS.get(state.pop("_spec_id", None))
        self.__dict__.update(state, **({"spec": live} if live is not None else {}))

    def _log(self, msg: str) -> None:
        # resolved per call (not stored): Ray swaps builtins.print in the driver, and a stored
        # `print` then no longer pickles by reference
        (self.log or print)(redact(msg))

    # ---- trials
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        name = trial_name(trial)
        config = dict(trial.config or {})
        self.writer.trial_start(trial.trial_id, name, config, spec_yaml=self._trial_spec(name, config))

    def _trial_spec(self, name: str, config: dict[str, Any]) -> str:
        """The spec.yaml that reproduces a trial (its config fixed, its seed, its teacher)."""

        try:
            return dump_spec(best_spec(self.spec, config, trial_seed(self.spec, name), self._teacher_path))
        except Exception:  # noqa: BLE001 - e.g. a config the schema refuses: still log the trial
            return dump_spec(self.spec.model_copy(update={"params": config}))

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._settle_restored(trials)

    def _settle_restored(self, trials) -> None:
        """Once per resumed driver: every trial that already ended gets its run settled."""
        if self._settled or not self.resume or self.writer is None:
            return
        self._settled = True
        self.writer.retire_unknown(t.trial_id for t in trials)  # started after the last snapshot
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                self._settle(t, "FINISHED" if t.status == "TERMINATED" else "FAILED")

    def _settle(self, trial, status: str | None) -> None:
        rows = result_rows(trial)
        metrics = [m for r in rows for m in metrics_of(r)]
        last = rows[-1] if rows else (trial.last_result or {})
        tags: dict[str, Any] = {"kdtune.last_epoch": last.get("epoch")}
        if status == "FAILED":
            tags["kdtune.error"] = error_reason(trial)
        name, config = trial_name(trial), dict(trial.config or {})
        self.writer.trial_settle(trial.trial_id, name, config, metrics, status=status,
                                 checkpoint=self._local_checkpoint(trial),
                                 tags={k: v for k, v in tags.items() if v is not None},
                                 spec_yaml=self._trial_spec(name, config))

    def _local_checkpoint(self, trial) -> str | None:
        try:
            ckpt = trial.checkpoint
            if ckpt is not None and isinstance(ckpt.filesystem, LocalFileSystem):
                return str(Path(ckpt.path) / CHECKPOINT)
        except Exception:  # noqa: BLE001
            pass
        return None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if FATAL_KEY in result:
            self._end_fatal(trial, str(result[FATAL_KEY]))
            return
        self.writer.trial_metrics(trial.trial_id, metrics_of(result))
        if INFEASIBLE_KEY in result:  # recorded as such, never ranked (no metric)
            self.writer.trial_tags(trial.trial_id, {"kdtune.infeasible": "true"})
            self.writer.trial_end(trial.trial_id, "FAILED", reason=f"infeasible: {result[INFEASIBLE_KEY]}")
            self._ended.add(trial.trial_id)
            return
        if NODE_KEY in result:  # once per trial start: where it runs, and whether the teacher
            cache = result.get("teacher_cache")  # outputs come from the sweep's cache
            self.writer.trial_tags(trial.trial_id, {
                "kdtune.node_id": result[NODE_KEY],
                **({"kdtune.teacher_cache": "true" if cache else "false"} if cache is not None else {})})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self._ckpt[trial.trial_id] = checkpoint

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.writer.trial_tags(trial.trial_id, {"kdtune.retries": trial.num_failures,
                                                "kdtune.last_error": error_reason(trial)})

    def _end_fatal(self, trial, reason: str) -> None:
        """The spec's own error (not retried): the trial's run FAILED, and so will the sweep's.
        Heard with the trial's last result: the guard then stops the sweep, and a trial stopped
        that way never reaches ``on_trial_complete``."""
        if self._fatal:
            return
        self._fatal = True
        folder = trial_folder(trial)
        if folder is not None and (folder / "error.txt").is_file():
            self.writer.trial_text(trial.trial_id, (folder / "error.txt").read_text(), "error.txt")
        self.writer.trial_end(trial.trial_id, "FAILED", reason=reason)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        if FATAL_KEY in last:
            self._end_fatal(trial, str(last[FATAL_KEY]))
            return
        if trial.trial_id in self._ended:
            return
        epoch = last.get("epoch")
        tags = {"kdtune.last_epoch": epoch}
        if isinstance(epoch, (int, float)) and epoch < self.spec.epochs:
            tags["kdtune.stopped_early"] = "true"  # ASHA stopped it at this rung
        self.writer.trial_tags(trial.trial_id, {k: v for k, v in tags.items() if v is not None})
        if self.resume:  # epochs logged by a driver that died with its queue: fill them in
            self._settle(trial, None)
        self._upload_checkpoint(trial)
        self.writer.trial_end(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        text = error_text(trial)
        if text:
            self.writer.trial_text(trial.trial_id, text, "error.txt")
        if self.resume:
            self._settle(trial, None)
        self._upload_checkpoint(trial)
        self.writer.trial_end(trial.trial_id, "FAILED", reason=error_reason(trial))

    def _upload_checkpoint(self, trial) -> None:
        """The trial's latest checkpoint, read from Tune storage (local, NFS or s3://)."""
        ckpt = None
        try:
            ckpt = trial.checkpoint
        except Exception:  # noqa: BLE001
            pass
        ckpt = ckpt or self._ckpt.get(trial.trial_id)
        if ckpt is None:
            return
        try:
            if isinstance(ckpt.filesystem, LocalFileSystem):
                path = Path(ckpt.path) / CHECKPOINT
                if path.is_file():
                    self.writer.trial_checkpoint(trial.trial_id, path)
                return
            tmp = Path(tempfile.mkdtemp(prefix="kdtune-upload-"))
            ckpt.to_directory(str(tmp))
            if (tmp / CHECKPOINT).is_file():
                self.writer.trial_checkpoint(trial.trial_id, tmp / CHECKPOINT, cleanup=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        except Exception as e:  # noqa: BLE001 - tracking never stops a sweep; say so
            self._log(f"MLflow: checkpoint of {trial} not uploaded ({type(e).__name__}: {e})")


def sweep_callbacks(spec: Spec, resume: bool = False,
                    log: Callable[[str], None] | None = None) -> list[Callback]:
    """The callbacks ``kdtune sweep run`` passes to ``run_sweep``: MLflow logging."""
    return [MLflowCallback(spec, resume, log=log)]


__all__ = ["MLflowCallback", "metrics_of", "sweep_callbacks"]
