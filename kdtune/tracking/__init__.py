"""Every MLflow call in kdtune.

Layout in the tracking store: experiment = ``spec.name``; one *parent* run per ``sweep run``
(tag ``kdtune.role=sweep``), one *child* run per trial (``mlflow.parentRunId``, tag
``kdtune.trial_id``), and the teacher as its own run (``kdtune.role=teacher``) that every
trial links with ``kdtune.teacher_run_id``.

One writer: only the sweep's driver writes (``SweepWriter``, fed by the Ray Tune callback in
``kdtune/tune/callbacks.py``); trials never talk to MLflow. So the sqlite default never sees two
writing processes ("database is locked"), and a remote server URI works unchanged. Writes are
typed *operations* applied in order by one background thread, so a slow or absent MLflow never
stalls Tune's loop: a transient failure is retried with backoff; whatever is still unsent when
the sweep ends is saved to ``<run_dir>/mlflow_pending.jsonl`` and reported (never dropped
silently); the next ``sweep run --resume`` sends it. Runs are found-or-created by tag
(``kdtune.sweep_uid``, ``kdtune.trial_id``, ``kdtune.teacher_key``), so a retried trial, a
retried request or a restarted driver never makes a second run.

Modules (each imports the others by submodule, never through this package):

- ``schema``: tag and file names, and the pure helpers that make values MLflow-ready;
- ``client``: the MLflow client, error classification, batched writes, which store to read;
- ``preflight``: ``check_tracking``, the store checked before Ray starts;
- ``ops``: the writer's operations (frozen dataclasses, JSON for the spool);
- ``spool``: the pending-writes file (``mlflow_pending.jsonl``);
- ``writer``: ``SweepWriter``;
- ``query``: the read side (``list_sweeps``, ``best_trials``, ``write_best_yaml`` …);
- ``registry``: ``models:/NAME@alias`` teachers → a local checkpoint;
- ``ui``: the ``kdtune ui`` server command.

Promoting a trial to a registered model needs the trainer's checkpoint loader, so it lives
above this package, in ``kdtune.promotion``.
"""

from kdtune.tracking.client import client, ensure_experiment, git_commit, is_remote, resolve_uri
from kdtune.tracking.preflight import check_tracking
from kdtune.tracking.query import (best_trials, find_sweep, list_sweeps, run_checkpoint, run_spec,
                                   write_best_yaml)
from kdtune.tracking.registry import download_registered_model, parse_models_uri
from kdtune.tracking.schema import (CHECKPOINT_DIR, ERROR_TAG, MODEL_NAME, PARENT_TAG, PENDING_FILE,
                                    ROLE, RUN_ID_FILE, SWEEP, SWEEP_TAG, SWEEP_UID_TAG, TEACHER,
                                    TEACHER_KEY_TAG, TEACHER_RUN_TAG, TRIAL, TRIAL_ID_TAG, flatten)
from kdtune.tracking.ui import ui_command
from kdtune.tracking.writer import SweepWriter

__all__ = ["CHECKPOINT_DIR", "ERROR_TAG", "MODEL_NAME", "PARENT_TAG", "PENDING_FILE", "ROLE",
           "RUN_ID_FILE", "SWEEP", "SWEEP_TAG", "SWEEP_UID_TAG", "SweepWriter", "TEACHER",
           "TEACHER_KEY_TAG", "TEACHER_RUN_TAG", "TRIAL", "TRIAL_ID_TAG", "best_trials",
           "check_tracking", "client", "download_registered_model", "ensure_experiment",
           "find_sweep", "flatten", "git_commit", "is_remote", "list_sweeps", "parse_models_uri",
           "resolve_uri", "run_checkpoint", "run_spec", "ui_command", "write_best_yaml"]
