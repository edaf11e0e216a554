"""``kdtune ui``: the command line of an MLflow server for a local store, on loopback only."""

from __future__ import annotations

import sys


def ui_command(uri: str, port: int, artifacts: str | None = None, workers: int = 1) -> list[str]:
    """``mlflow server`` on 127.0.0.1 for a local store (artifacts served from ``artifacts``)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    return cmd
