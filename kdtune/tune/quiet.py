"""Hide Ray's, Tune's and MLflow's own chatter during a sweep (``kdtune sweep run --verbose``
shows it again).

What is hidden, and how (all in this process, the driver, which is where they print):

- Tune's "Configuration for experiment" box, "View detailed results here" and the TensorBoard
  hint: Ray 2.60's new output engine (``ray/tune/experimental/output.py``) prints them in
  ``experiment_started`` whatever ``RunConfig(verbose=...)`` says. ``RAY_AIR_NEW_OUTPUT=0``
  selects the legacy engine, which at ``verbose=0`` (what kdtune passes) prints nothing;
  kdtune's own ``Progress`` callback shows the sweep instead.
- Ray's token-authentication warning (``ray._private.authentication``) when ``RAY_AUTH_MODE``
  is unset: kdtune's local Ray listens on 127.0.0.1 only.
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

NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"

# logger name -> the level it is raised to while quiet
LOGGERS: dict[str, int] = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    "ray.tune.execution.tune_controller": logging.ERROR,
    "ray.tune.execution.experiment_state": logging.ERROR,
    "ray.tune.utils.util": logging.ERROR,
    "mlflow.store.db.utils": logging.WARNING,
}

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


def is_quiet() -> bool:
    """Whether ``quiet()`` is in effect in this process."""
    return bool(_saved)
