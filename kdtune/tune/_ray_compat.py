"""Every use of Ray's internals in kdtune, in one place, checked against the Ray it runs on.

Internals are names Ray does not document as public: underscore names, ``ray._private``,
Tune's internal ``Trial`` objects' attributes (``storage``, ``error_file``, ``experiment_tag``),
the controller's state saving and ASHA's rungs.
kdtune needs a few of them (see each function for why). ``missing()`` lists those this Ray
lacks; ``tests/test_ray_compat.py`` fails with that list when a Ray upgrade moves one.
"""

from __future__ import annotations

import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray
from ray._private import ray_constants
from ray.tune import Tuner
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler, _Bracket
from ray.tune.search.optuna import OptunaSearch

TESTED = "2.60"  # the Ray release these internals were read from


def missing() -> list[str]:
    """The internals this module uses that the installed Ray does not have (empty: all fine)."""
    want = {
        "ray._private.ray_constants.ENABLE_RAY_CLUSTER": hasattr(ray_constants, "ENABLE_RAY_CLUSTER"),
        "ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR":
            hasattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR"),
        "ray.init(_node_ip_address=)": "_node_ip_address" in inspect.getsource(inspect.unwrap(ray.init)),
        "Tuner._local_tuner": "_local_tuner" in Tuner.__init__.__code__.co_names,
        "Trial.storage": "storage" in Trial.__init__.__code__.co_varnames,
        "Trial.error_file": hasattr(Trial, "error_file"),
        "Trial.experiment_tag": "experiment_tag" in Trial.__init__.__code__.co_varnames,
        "TuneController._checkpoint_manager":
            "_checkpoint_manager" in TuneController.__init__.__code__.co_names,
        "_ExperimentCheckpointManager._should_force_sync_up":
            "_should_force_sync_up" in _ExperimentCheckpointManager.__init__.__code__.co_names,
        "AsyncHyperBandScheduler._trial_info / _brackets":
            {"_trial_info", "_brackets"} <= set(AsyncHyperBandScheduler.__init__.__code__.co_names),
        "_Bracket._rungs / on_result": "_rungs" in _Bracket.__init__.__code__.co_names
            and hasattr(_Bracket, "on_result"),
        "OptunaSearch._ot_study": "_ot_study" in OptunaSearch.__init__.__code__.co_names,
    }
    return [name for name, ok in want.items() if not ok]


@contextmanager
def _loopback_env() -> Iterator[None]:
    """Settings a new local Ray starts with (its processes inherit them), put back afterwards:
    a later ``ray start`` or a connection to a real cluster from this process sees the usual ones.

    - Loopback only. Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's
      outward address (``services.resolve_ip_for_localhost``) and binds its gRPC servers to
      every interface, unless multi-node clusters are off: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
      read at import (``ray_constants.ENABLE_RAY_CLUSTER``, set here too).
    - ``RAY_LOGGER_LEVEL=warning`` (unless set): Ray Tune hands each trial actor the driver's
      AWS credentials as runtime-env variables, and Ray's runtime-env agent logs every runtime
      env at INFO into the world-readable /tmp/ray/session_*/logs.
    """
    env = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0",
           "RAY_LOGGER_LEVEL": os.environ.get("RAY_LOGGER_LEVEL", "warning")}
    old_env = {k: os.environ.get(k) for k in env}
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def init_local_loopback(**kwargs: Any) -> None:
    """A new local Ray bound to 127.0.0.1 only (``address="local"``: never attach silently to
    another ``ray start`` cluster on this machine)."""
    with _loopback_env():
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)


def replace_callbacks(tuner: Tuner, callbacks: list, stop: Any = None) -> None:
    """A restored Tuner carries the callbacks (and stopper) pickled with the experiment; Ray has
    no public way to give ``Tuner.restore`` new ones, and this process's own (MLflow writer,
    progress, the failure guard) must replace them."""
    config = tuner._local_tuner.get_run_config()
    config.callbacks = callbacks
    config.stop = stop


def trial_number(trial: Trial) -> int | None:
    """Tune's sequential trial number, the head of its ``experiment_tag`` (``3_lr=0.1,…``)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return int(head) if head.isdigit() else None


def trial_error_path(trial: Trial) -> str | None:
    """The driver's staging copy of the trial's error text (written before ``on_trial_error``)."""
    return getattr(trial, "error_file", None)


def result_rows(trial: Trial) -> list[dict[str, Any]]:
    """Every result a trial reported: its ``result.json`` in Tune storage (local, NFS or s3://);
    a line cut short by a crash is skipped."""
    try:
        fs = trial.storage.storage_filesystem
        with fs.open_input_stream(f"{trial.storage.trial_fs_path}/result.json") as f:
            text = f.readall().decode()
    except Exception:  # noqa: BLE001 - never reported, or storage unreachable
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def trial_folder(trial: Trial) -> Path | None:
    """The trial's local folder in Tune storage (None for remote storage)."""
    try:
        from pyarrow.fs import LocalFileSystem  # lazy: pyarrow is Ray's, only needed here

        if isinstance(trial.storage.storage_filesystem, LocalFileSystem):
            return Path(trial.storage.trial_fs_path)
    except Exception:  # noqa: BLE001
        pass
    return None


def force_state_save(tune_controller: Any) -> None:
    """Make the controller save the experiment state at the end of this step.

    Tune saves it on a timer (``TUNE_GLOBAL_CHECKPOINT_S``, "auto": at most every ~10 s), so a
    driver killed between a trial's end and the next save forgets that the trial ended, and
    ``--resume`` runs it again. kdtune's schedulers call this when a trial is added, ends, is
    stopped or fails: the flag Tune itself sets every ``num_to_keep`` trial checkpoints."""
    # schedulers get a TrialRunnerWrapper that warns on non-whitelisted attributes: unwrap it
    controller = vars(tune_controller).get("_tune_controller", tune_controller)
    controller._checkpoint_manager._should_force_sync_up = True


def asha_record(scheduler: Any, trial: Trial, time: float, reward: float) -> None:
    """Record a past result in ASHA's rungs (``_Bracket.on_result``), as if it had just
    arrived; the decision it returns is ignored (it was taken before the restart)."""
    bracket = scheduler._trial_info[trial.trial_id]
    bracket.on_result(trial, time, reward)


def asha_rungs(scheduler: Any) -> list[tuple[float, dict[str, float]]]:
    """ASHA's rungs: (milestone, {trial id: recorded reward}) per rung, highest first."""
    return [(m, dict(rec)) for b in scheduler._brackets for m, rec in b._rungs]


def optuna_study(searcher: Any) -> Any:
    """The Optuna study an ``OptunaSearch`` created (in its constructor, for a define-by-run
    space); Ray exposes no accessor, and a warm start must add trials to it."""
    return searcher._ot_study
