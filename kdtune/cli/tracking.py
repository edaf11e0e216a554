"""``kdtune best | promote | ui`` and ``kdtune sweep list``: the MLflow side of the CLI.

``register(app, sweep_app)`` adds them (the logic is in ``kdtune.api`` and ``kdtune/tracking/``). Every command
reads the tracking store named by ``--tracking-uri``, else ``--spec``'s ``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else the default spec's store (``./kdtune-results/mlflow.db``). Bad input
(no such sweep, a run without a checkpoint) prints one line and exits 2 with nothing changed;
an unreachable store exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from kdtune.cli.common import exits_on, console, fail, guarded, say, short

SpecOpt = typer.Option(None, "--spec", help="A spec: its tracking store (and sweep name).")
UriOpt = typer.Option(None, "--tracking-uri", help="The MLflow store or server (overrides --spec).")
SweepOpt = typer.Option(None, "--sweep", help="Sweep (experiment) name; default: the newest sweep.")
MaxParamsOpt = typer.Option(None, "--max-params", help="Only trials with params_count <= N.")
MaxLatencyOpt = typer.Option(None, "--max-latency-ms", help="Only trials with latency_ms <= X "
                             "(measured on the driver after the sweep).")


def _mlflow_error() -> type[BaseException]:
    from mlflow.exceptions import MlflowException  # lazy: MLflow takes seconds to import

    return MlflowException


def _store_text(e: BaseException) -> str:
    return "tracking store: " + (str(e).strip().splitlines() or ["?"])[0][:300]


# an unreachable/broken tracking store → one line, exit 1 (SpecError → exit 2 via guarded)
_store_errors = exits_on(_mlflow_error, 1, _store_text)


def _store(spec: Optional[Path], uri: Optional[str]):
    """(tracking uri, loaded spec or None)."""
    from kdtune.checks import load_spec  # lazy: the checks import torch
    from kdtune.tracking.client import resolve_uri  # lazy: MLflow

    s = load_spec(spec) if spec else None
    return resolve_uri(s, uri), s


def best(sweep: Optional[str] = SweepOpt,
         top: int = typer.Option(1, "--top", min=1, help="How many trials to show."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON (machine-readable)."),
         pareto: bool = typer.Option(False, "--pareto", help="The non-dominated full-length "
                                     "trials (accuracy against cost), best first."),
         max_params: Optional[float] = MaxParamsOpt, max_latency_ms: Optional[float] = MaxLatencyOpt,
         spec: Optional[Path] = SpecOpt, tracking_uri: Optional[str] = UriOpt) -> None:
    """The best trials of a sweep, from MLflow (metric at each trial's last reported epoch);
    writes best.yaml beside the sweep's results."""
    from rich.table import Table

    from kdtune import api  # lazy: MLflow and torch load only for the command that runs

    uri, s = _store(spec, tracking_uri)
    if pareto:
        front = api.front(s, sweep=sweep, tracking_uri=uri)
        if as_json:
            typer.echo(json.dumps(front, indent=2, default=str))
            return
        names = [m for m, _ in front["objectives"]]
        table = Table("trial", *names, "params", title=f"sweep {front['sweep']}: Pareto front "
                      f"({', '.join(f'{d} {m}' for m, d in front['objectives'])})")
        for r in front["front"]:
            table.add_row(r["run_name"], *(f"{r[m]:.4g}" for m in names),
                          " ".join(f"{k}={short(v)}" for k, v in r["params"].items()))
        console.print(table)
        return
    res = api.best(s, sweep=sweep, top=top, tracking_uri=uri, max_params=max_params,
                   max_latency_ms=max_latency_ms)
    out = res.to_dict()
    path = res.best_yaml
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if len(out.get("objectives", [])) > 1:
        say(f"multi-objective sweep: ranked by {out['metric']} among full-length trials (the "
            "most accurate trial on the front first); `--pareto` shows the whole front")
    m = out["metric"]
    table = Table("rank", "trial", m, "epoch", "test_acc", "status", "params",
                  title=f"sweep {out['sweep']} ({out['mode']} {m}; {out['ranked']}/{out['trials']} trials scored)")
    for r in out["top"]:
        table.add_row(str(r["rank"]), r["run_name"] or r["run_id"], f"{r['value']:.4f}", str(r["epoch"]),
                      "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}", r["status"],
                      " ".join(f"{k}={short(v)}" for k, v in r["params"].items()))
    console.print(table)
    if path:
        console.print(f"best.yaml: {path}", highlight=False)


def promote(sweep: Optional[str] = SweepOpt,
            run_id: Optional[str] = typer.Option(None, "--run-id", help="Promote this run instead "
                                                 "(a trial, or a teacher run)."),
            model_name: Optional[str] = typer.Option(None, "--model-name", help="Registered model "
                                                     "name (default: the sweep's name)."),
            alias: str = typer.Option("champion", "--alias", help="Alias set on the new version."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON."),
            max_params: Optional[float] = MaxParamsOpt, max_latency_ms: Optional[float] = MaxLatencyOpt,
            spec: Optional[Path] = SpecOpt, tracking_uri: Optional[str] = UriOpt) -> None:
    """Register the best trial's student (pt2) as a new model version and set an alias (with a
    budget: the most accurate trial within it)."""
    from kdtune import api  # lazy: MLflow and torch load only for the command that runs

    if sweep and run_id:
        fail("give --sweep or --run-id, not both")
    uri, s = _store(spec, tracking_uri)
    if run_id and (max_params is not None or max_latency_ms is not None):
        fail("give --run-id or a budget (--max-params, --max-latency-ms), not both")
    res = api.promote(s, sweep=sweep, run_id=run_id, model_name=model_name, alias=alias,
                      tracking_uri=uri, max_params=max_params, max_latency_ms=max_latency_ms,
                      log=(lambda _: None) if as_json else console.print)
    out = res.to_dict()
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        # the hint names the store: MLflow alone would look in ./mlflow.db, not kdtune's
        say(f"load it: MLFLOW_TRACKING_URI={res.tracking_uri} python -c \"import mlflow; "
            f"m = mlflow.pytorch.load_model('{res.uri}'); print(m)\"")
        say(f"as a teacher: teacher.checkpoint: {res.uri}")


def ui(port: int = typer.Option(5000, "--port", help="Port on 127.0.0.1."),
       spec: Optional[Path] = SpecOpt,
       backend_store_uri: Optional[str] = typer.Option(None, "--backend-store-uri",
                                                       help="The MLflow store (overrides --spec)."),
       workers: int = typer.Option(1, "--workers", min=1, help="Server worker processes.")) -> None:
    """The MLflow UI for the tracking store, bound to 127.0.0.1 (Ctrl-C stops it)."""
    from kdtune.spec import parse_spec
    from kdtune.spec.paths import artifacts_beside
    from kdtune.spec.paths import tracking_uri as tracking_uri_of
    from kdtune.tracking.client import is_remote  # lazy: MLflow
    from kdtune.tracking.ui import ui_command  # lazy: as above

    uri, s = _store(spec, backend_store_uri)
    if is_remote(uri):
        console.print(f"the tracking store is a server: open {uri}", highlight=False)
        return
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = artifacts_beside(uri)
    else:
        artifacts = artifacts_beside(tracking_uri_of(s or parse_spec({})))
    cmd = ui_command(uri, port, artifacts, workers)
    # the server's job runner (a dozen huey workers for GenAI jobs) is not needed to browse runs
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    console.print(f"MLflow UI for {uri}: http://127.0.0.1:{port}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # the server replaces this process: its PID is the one to stop


def sweep_list(spec: Optional[Path] = SpecOpt, tracking_uri: Optional[str] = UriOpt,
               as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Sweeps in the tracking store, newest first."""
    from rich.table import Table

    from kdtune.tracking.query import list_sweeps  # lazy: MLflow

    uri, _ = _store(spec, tracking_uri)
    rows = list_sweeps(uri)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print(f"no sweeps in {uri}", highlight=False)
        return
    table = Table("sweep", "started", "status", "trials", "failed", "best", "parent run", title=uri)
    for r in rows:
        table.add_row(r["sweep"], r["started"] or "-", r["status"], str(r["trials"]), str(r["failed"]),
                      "-" if r["best"] is None else f"{r['metric']} {r['best']:.4f}", r["run_id"])
    console.print(table)


def register(app: typer.Typer, sweep_app: typer.Typer | None = None) -> None:
    """Add the commands to kdtune's app (and ``list`` to its ``sweep`` group)."""

    for fn, name in ((best, "best"), (promote, "promote"), (ui, "ui")):
        app.command(name)(guarded(_store_errors(fn)))
    if sweep_app is None:
        sweep_app = next((g.typer_instance for g in app.registered_groups if g.name == "sweep"), None)
    if sweep_app is not None:
        sweep_app.command("list")(guarded(_store_errors(sweep_list)))
