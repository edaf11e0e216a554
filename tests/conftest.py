"""Shared test setup: quiet, offline, local services only."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


def require(ok: bool, what: str) -> None:
    """Skip a test whose system component is missing, with the reason; under CI=true fail it
    instead: CI installs every component (scripts/install.sh), so a missing one there is a broken
    install step, not a reason to pass silently."""
    import pytest

    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: scripts/install.sh should have installed it)")
    pytest.skip(what)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _mlflow_uri_as_it_was():
    """A test that points MLflow somewhere (``mlflow.set_tracking_uri`` also writes
    $MLFLOW_TRACKING_URI) must not send later tests, or the sweeps they start in subprocesses,
    to its store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {k: os.environ.get(k) for k in keys}
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
