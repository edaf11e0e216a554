"""Hide Ray's, Tune's and MLflow's own chatter during a sweep (``kdtune sweep run --verbose``
shows it again).

What is hidden, and how (all in this process, the driver, which is where they print):

- Tune's "Configuration for experiment" box, "View detailed results here" and the TensorBoard
  hint: Ray 2.60's new output engine (``ray/tune/experimental/output.py``) prints them in
  ``experiment_started`` whatever ``RunConfig(verbose=...)`` says. ``RAY_AIR_NEW_OUTPUT=0``
  selects the legacy engine, which at ``verbose=0`` (what kdtune passes) prints nothing;
  kdtune's own ``Progress`` callback shows the sweep instead.
- Ray's token-authentication warning ("Token authentication is enabled/disabled for this Ray
  cluster", logged by a Ray-internal module when ``RAY_AUTH_MODE`` is unset): a filter on the
  handler of Ray's ``ray`` logger drops it by its wording (kdtune's local Ray listens on
  127.0.0.1 only).
- Tune's controller and bookkeeping warnings (``tune_controller``: pending-trial limits,
  buffered training; ``experiment_state`` and ``utils.util``: "may be a performance
  bottleneck"): logger levels raised to ERROR, so their errors still show.
- MLflow's "Creating initial MLflow database tables" / "Updating database tables" INFO lines
  (``mlflow.store.db.utils``): level WARNING.

Left alone, because they matter to the user: Tune's insufficient-resources warning
(``ray.tune.execution.insufficient_resources_manager``: a trial that can never start), the
interrupted-experiment hint and "Trials did not complete" (``ray.tune.tune``), every ERROR,
and anything MLflow logs at WARNING or above.
"""

from __future__ import annotations

import logging
import os

import ray  # noqa: F401  (Ray installs the handler of its "ray" logger on import)

NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"

# logger name -> the level it is raised to while quiet
LOGGERS: dict[str, int] = {
    "ray.tune.execution.tune_controller": logging.ERROR,
    "ray.tune.execution.experiment_state": logging.ERROR,
    "ray.tune.utils.util": logging.ERROR,
    "mlflow.store.db.utils": logging.WARNING,
}

# Ray messages dropped by their wording (from Ray-internal modules: no public logger name)
RAY_MESSAGES = ("Token authentication is enabled", "Token authentication is disabled")


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``RAY_MESSAGES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not record.getMessage().startswith(RAY_MESSAGES)
        except Exception:  # a record that cannot be formatted is not ours to hide
            return True


_DROP = _DropMessages()

# what quiet() changed, so that quiet(verbose=True) in the same process puts it back
_saved: dict[str, int] = {}
_env_set = False


def quiet(verbose: bool = False) -> None:
    """Hide the chatter listed in this module's docstring; ``verbose=True`` shows it (and undoes
    an earlier ``quiet()`` in this process). A ``RAY_AIR_NEW_OUTPUT`` the user set is kept."""
    global _env_set
    if verbose:
        for name, level in _saved.items():
            logging.getLogger(name).setLevel(level)
        _saved.clear()
        for handler in logging.getLogger("ray").handlers:
            handler.removeFilter(_DROP)
        if _env_set:
            os.environ.pop(NEW_OUTPUT_ENV, None)
            _env_set = False
        return
    if NEW_OUTPUT_ENV not in os.environ:
        os.environ[NEW_OUTPUT_ENV] = "0"
        _env_set = True
    for name, level in LOGGERS.items():
        logger = logging.getLogger(name)
        _saved.setdefault(name, logger.level)
        logger.setLevel(level)
    for handler in logging.getLogger("ray").handlers:  # Ray's loggers do not propagate past it
        handler.addFilter(_DROP)  # a no-op when already there


def is_quiet() -> bool:
    """Whether ``quiet()`` is in effect in this process."""
    return bool(_saved)
