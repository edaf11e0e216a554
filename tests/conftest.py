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
