"""``kdtune report`` (one self-contained HTML file of a sweep, read from MLflow) and
``kdtune dashboard`` (optuna-dashboard on the sweeps' Optuna studies, bound to 127.0.0.1).

``register(app)`` adds them; the logic is in ``kdtune.api`` and ``kdtune/tracking/summary.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from kdtune.cli.common import console, guarded, say
from kdtune.redact import redact
from kdtune.cli.tracking import SpecOpt, SweepOpt, UriOpt, _store, _store_errors


def report(sweep: Optional[str] = SweepOpt, spec: Optional[Path] = SpecOpt,
           tracking_uri: Optional[str] = UriOpt,
           out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write "
                                              "(default: <storage>/<sweep>/report.html).")) -> None:
    """One self-contained HTML report of a sweep (from MLflow): leaderboard, plots, and each
    method's best configuration; opens offline."""
    from kdtune import api  # lazy: MLflow and plotly load only for the command that runs

    uri, s = _store(spec, tracking_uri)
    path = api.report(s, sweep=sweep, tracking_uri=uri, out=out)
    say(f"report: {path}")


def dashboard(spec: Optional[Path] = SpecOpt,
              port: int = typer.Option(8080, "--port", help="Port on 127.0.0.1.")) -> None:
    """optuna-dashboard for the sweeps' Optuna studies (one per sweep, named after it), bound
    to 127.0.0.1 (Ctrl-C stops it)."""
    from kdtune import api  # lazy: as above
    from kdtune.checks import load_spec  # lazy: the checks import torch

    cmd = api.dashboard_command(load_spec(spec) if spec else None, port=port)
    console.print(f"Optuna dashboard for {redact(cmd[1])}: http://127.0.0.1:{port}",
                  highlight=False, soft_wrap=True)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # the server replaces this process: its PID is the one to stop


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``dashboard`` to kdtune's app."""
    app.command("report")(guarded(_store_errors(report)))
    app.command("dashboard")(guarded(dashboard))
