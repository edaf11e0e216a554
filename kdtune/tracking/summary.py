"""A finished sweep's answer on its MLflow parent run, a report read back from MLflow, and the
RDB storage that keeps the sweep's Optuna study for optuna-dashboard.

After ``kdtune sweep run`` (and after each ``--resume``) ``summarize_sweep`` writes, on the
parent run: the metric ``best_<metric>``, the params ``best.<name>``, the tags
``kdtune.best_run_id`` / ``kdtune.best_trial``, and the artifacts ``best.yaml``,
``best_params.json``, ``leaderboard.json`` (``mlflow.log_table``'s format) and ``plots/``
(PNG + self-contained HTML from ``kdtune.report``). The sweep's writer has closed by then, so
the driver is still the store's only writer.

MLflow refuses to change a logged param. A ``best.<name>`` param is logged when it is new or
has the same value; when a resumed sweep finds a new best whose values differ, those params
keep the earlier best's values and the tag ``kdtune.best_params_stale`` names them, while
``best_params.json`` and the tags always describe the current best.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna
import pyarrow.fs

from kdtune.report import TrialRecord, make_plots, ranked, write_report
from kdtune.report.records import plain_params
from kdtune.spec.paths import BEST_FILE, is_uri, run_dir, tracking_uri
from kdtune.spec.schema import Spec
from kdtune.tracking.client import _log_batch, _one_line, client
from kdtune.report.pareto import Point, pareto_plot
from kdtune.tracking.query import _children, _typed, find_sweep, full_length, pareto
from kdtune.tracking.schema import PARAM_MAX, RUN_ID_FILE, TRIAL_ID_TAG, _str
from kdtune.tune.naming import NO_NUMBER, trial_number
from kdtune.tune.results import finite

Log = Callable[[str], None]

OPTUNA_STORAGE_ENV = "KDTUNE_OPTUNA_STORAGE"  # the Optuna DB when the tracking store is a server
OPTUNA_DB = "optuna.db"                      # beside a local sqlite tracking store
REPORT_FILE = "report.html"                  # <run_dir>/report.html: `kdtune report`'s default
PLOTS_DIR = "plots"
LEADERBOARD = "leaderboard.json"
BEST_PARAMS = "best_params.json"
BEST_RUN_TAG = "kdtune.best_run_id"
BEST_TRIAL_TAG = "kdtune.best_trial"
STALE_TAG = "kdtune.best_params_stale"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # how MLflow's UI finds tables (log_table's tag)


# --------------------------------------------------------------------------- Optuna storage
def optuna_storage_url(spec: Spec) -> str | None:
    """Where the sweep's Optuna study is kept: $KDTUNE_OPTUNA_STORAGE, else ``optuna.db`` beside
    a local sqlite tracking store (``<storage>/optuna.db`` by default), else None (in memory).

    Never the tracking database itself: MLflow and Optuna each keep an ``alembic_version``
    table, so a shared database breaks whichever migrates second.
    """
    env = os.environ.get(OPTUNA_STORAGE_ENV)
    if env:
        return env
    uri = tracking_uri(spec)
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / OPTUNA_DB}"
    return None


def optuna_storage(spec: Spec, *, fresh: bool = True) -> optuna.storages.RDBStorage | None:
    """The RDB storage for the sweep's study (named ``spec.name``), or None to keep it in memory.

    ``fresh``: a study of that name left by an earlier sweep whose Tune folder is gone (a new
    sweep starts only when none exists) is deleted, so its trials do not leak into this one.
    ``--resume`` does not come here: the searcher, storage included, is unpickled by Tune.
    """
    url = optuna_storage_url(spec)
    if url is None:
        return None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # the driver is the only writer, but optuna-dashboard may be reading: wait, not fail
        kwargs = {"engine_kwargs": {"connect_args": {"timeout": 30}}}
    storage = optuna.storages.RDBStorage(url, **kwargs)
    if fresh and spec.name in {s.study_name for s in storage.get_all_studies()}:
        optuna.delete_study(study_name=spec.name, storage=storage)
    return storage


# --------------------------------------------------------------------------- records
def _curve(points: list[tuple[Any, Any]]) -> list[tuple[int, float]]:
    """(epoch, value) pairs, one per epoch (its last value: a restarted epoch reports again)."""
    out: dict[int, float] = {}
    for e, v in points:
        f = finite(v)
        if f is not None and isinstance(e, (int, float)):
            out[int(e)] = f
    return sorted(out.items())


def _read(path: str) -> str | None:
    """A text file from a local path or a storage URI (s3://…), None when absent."""
    try:
        if is_uri(path):
            fs, p = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_stream(p) as f:
                return f.read().decode()
        return Path(path).read_text()
    except (OSError, ValueError):
        return None


def trial_curve(trial_path: str, metric: str) -> list[tuple[int, float]]:
    """A trial's learning curve from its ``result.json``: main epochs only (rows without
    ``epoch`` are pre-stage reports)."""
    text = _read(f"{trial_path.rstrip('/')}/result.json") or ""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and "epoch" in row and metric in row:
            rows.append((row["epoch"], row[metric]))
    return _curve(rows)


def trial_id_of(trial_path: str) -> str:
    """The Tune trial id ending a trial folder's name (``kd_003_<trial id>``)."""
    return trial_path.rstrip("/").rsplit("/", 1)[-1].rsplit("_", 1)[-1]


def _number(name: str, i: int) -> int:
    n = trial_number(name)
    return NO_NUMBER + i if n is None else n  # unnumbered: after every numbered trial


def records_from_sweep(result: Any, run_ids: dict[str, str] | None = None) -> list[TrialRecord]:
    """One record per row of a ``SweepResult`` (curves from each trial's ``result.json``);
    ``run_ids``: Tune trial id → MLflow run id."""
    metric, run_ids = result.spec.objective, run_ids or {}
    return [TrialRecord(name=t.name, number=_number(t.name, i), value=finite(t.value),
                        epochs=t.epochs, status=t.status, params=dict(t.config),
                        curve=trial_curve(t.path, metric), run_id=run_ids.get(trial_id_of(t.path)))
            for i, t in enumerate(result.trials)]


def _status(run) -> str:
    status = run.info.status
    if status == "FINISHED":
        return "stopped" if run.data.tags.get("kdtune.stopped_early") == "true" else "completed"
    return {"FAILED": "error", "RUNNING": "running", "SCHEDULED": "running"}.get(status, "stopped")


def records_from_runs(c, runs: list, metric: str) -> list[TrialRecord]:
    """One record per trial run (MLflow): value at its last epoch, curve from the history."""
    out = []
    for i, r in enumerate(sorted(runs, key=lambda r: r.info.start_time or 0)):
        hist = sorted(c.get_metric_history(r.info.run_id, metric), key=lambda m: m.timestamp)
        curve = _curve([(m.step, m.value) for m in hist])
        name = r.info.run_name or r.info.run_id
        out.append(TrialRecord(name=name, number=_number(name, i),
                               value=finite(r.data.metrics.get(metric)),
                               epochs=max((m.step for m in hist), default=0), status=_status(r),
                               params=_typed(r.data.params), curve=curve, run_id=r.info.run_id))
    return out


# --------------------------------------------------------------------------- leaderboard
def leaderboard(records: list[TrialRecord], metric: str, mode: str) -> dict[str, Any]:
    """The trials best first as ``{"columns": […], "data": [[…], …]}``: the JSON that
    ``mlflow.log_table`` writes (pandas ``orient="split"``), so ``MlflowClient.load_table``
    and the UI read it."""
    rows = ranked(records, mode)  # the sweep's one ranking; trials without a value last
    params = sorted({k for r in rows for k in r.params})
    columns = ["rank", "trial", metric, "epochs", "status", "run_id", *params]
    data = []
    for i, r in enumerate(rows):
        p = plain_params(r)
        data.append([i + 1 if r.has_value else None, r.name, r.value, r.epochs, r.status,
                     r.run_id, *(p.get(k) for k in params)])
    return {"columns": columns, "data": data}


def log_table_json(c, run_id: str, table: dict[str, Any], artifact_file: str) -> None:
    """Write a table as ``mlflow.log_table`` does, replacing the file (log_table appends to an
    existing one, which would repeat every row after each ``--resume``)."""
    c.log_text(run_id, json.dumps(table, default=str), artifact_file)
    tags = c.get_run(run_id).data.tags
    listed = json.loads(tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in listed:
        c.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps(listed + [entry]))


# --------------------------------------------------------------------------- the parent run
def parent_run_id(spec: Spec) -> str | None:
    """The sweep's parent run, as its writer recorded it in ``<run_dir>/mlflow_parent_run_id``."""
    try:
        return (run_dir(spec) / RUN_ID_FILE).read_text().strip() or None
    except OSError:
        return None


def log_best_params(c, run_id: str, params: dict[str, Any]) -> list[str]:
    """Log ``best.<name>`` params that are new or unchanged; return the names whose logged value
    is an earlier best's (MLflow keeps a param's first value) and set or clear the stale tag."""
    run = c.get_run(run_id)
    have = run.data.params
    want = {f"best.{k}": _str(v) for k, v in params.items()}
    new = {k: v for k, v in want.items() if k not in have}
    stale = sorted(k for k in have if k.startswith("best.") and want.get(k) != have[k])
    _log_batch(c, run_id, params=new)
    if stale:
        c.set_tag(run_id, STALE_TAG, ",".join(stale)[:PARAM_MAX])
    elif STALE_TAG in run.data.tags:
        c.delete_tag(run_id, STALE_TAG)
    return stale


def summarize_sweep(result: Any, log: Log = print) -> str | None:
    """Put the sweep's answer on its parent run (see the module docstring); return the run id.

    Never raises: a sweep that ran is not undone by a summary MLflow refused; one line says so.
    """
    spec: Spec = result.spec
    run_id = parent_run_id(spec)
    if run_id is None:
        log(f"MLflow: no summary (no {RUN_ID_FILE} in {run_dir(spec)})")
        return None
    try:
        _summarize(client(tracking_uri(spec)), run_id, result, log)
    except Exception as e:  # noqa: BLE001 - the sweep itself succeeded; say what is missing
        log(f"MLflow: sweep summary not written to parent run {run_id} ({_one_line(e)})")
        return None
    return run_id


def _summarize(c, run_id: str, result: Any, log: Log) -> None:
    spec: Spec = result.spec
    metric, mode = spec.objective, spec.direction
    parent = c.get_run(run_id)
    run_ids = {r.data.tags.get(TRIAL_ID_TAG): r.info.run_id for r in _children(c, parent)}
    records = records_from_sweep(result, run_ids)
    best = result.best
    if best is not None:
        best_run = run_ids.get(trial_id_of(best.path))
        params = plain_params(next(r for t, r in zip(result.trials, records) if t is best))
        scored = sum(r.has_value for r in records)
        _log_batch(c, run_id, metrics=[(f"best_{metric}", float(best.value), scored)],
                   tags={BEST_TRIAL_TAG: best.name, **({BEST_RUN_TAG: best_run} if best_run else {})})
        stale = log_best_params(c, run_id, params)
        c.log_dict(run_id, {"trial": best.name, "run_id": best_run, "metric": metric,
                            "value": best.value, "epochs": best.epochs, "params": params},
                   BEST_PARAMS)
        text = _read(result.best_yaml) if result.best_yaml else None
        if text is not None:
            c.log_text(run_id, text, BEST_FILE)
        if stale:
            log(f"MLflow: best.* params {', '.join(stale)} keep an earlier best's values "
                f"(MLflow params cannot change); {BEST_PARAMS} has the current best's")
    log_table_json(c, run_id, leaderboard(records, metric, mode), LEADERBOARD)
    with tempfile.TemporaryDirectory(prefix="kdtune-plots-") as d:
        plots = make_plots(records, metric, mode, Path(d))
        plots += _front(c, spec, parent, run_id, Path(d))
        if plots:
            c.log_artifacts(run_id, d, PLOTS_DIR)
    shown = f"best_{metric} {best.value:.4f} ({best.name})" if best else f"no trial reported {metric}"
    log(f"MLflow: parent run {run_id}: {shown}, leaderboard of {len(records)}, "
        f"{sum(p.suffix == '.png' for p in plots)} plots")


def _front(c, spec: Spec, parent, run_id: str, out: Path) -> list[Path]:
    """A cost-aware sweep's Pareto front on the parent run: a table and a plot of the first
    objective against the first cost objective (params_count for a one-metric sweep)."""
    if not (spec.multi_objective or spec.constraints or spec.search.student):
        return []
    found = pareto(tracking_uri(spec), spec.name)
    (metric, _), (cost, _) = found["objectives"][0], found["objectives"][1]
    front_ids = {f["run_id"] for f in found["front"]}
    points = [Point(r.info.run_name, r.data.metrics[cost], r.data.metrics[metric],
                    r.info.run_id in front_ids, spec.name)
              for r in _children(c, parent) if full_length(r)
              and finite(r.data.metrics.get(cost)) is not None and finite(r.data.metrics.get(metric)) is not None]
    table = {"columns": ["trial", metric, cost], "data": [[f["run_name"], f[metric], f[cost]]
                                                           for f in found["front"]]}
    log_table_json(c, run_id, table, "pareto_front.json")
    return pareto_plot(points, cost, metric, out) if points else []


# --------------------------------------------------------------------------- the report
def _sections(name: str, records: list[TrialRecord], methods: dict[str, str]):
    """The whole sweep, then one part per method when the sweep searched over several."""
    sections = [(name, records)]
    names = sorted({m for m in methods.values() if m})
    if len(names) > 1:
        sections += [(f"method {m}", [r for r in records if methods.get(r.run_id or "") == m])
                     for m in names]
    return sections


def report_path(parent, sweep: str, spec: Spec | None) -> Path:
    """``<run_dir>/report.html``: the parent run's ``kdtune.run_dir`` (a folder named after the
    sweep that exists here), else the spec's run folder, else ``./<sweep>-report.html``."""
    folder = parent.data.tags.get("kdtune.run_dir")
    # a tag is data, and may name a folder on the machine that ran the sweep
    if folder and not is_uri(folder) and Path(folder).name == sweep and Path(folder).is_dir():
        return Path(folder) / REPORT_FILE
    if spec is not None and not is_uri(spec.storage):
        return run_dir(spec) / REPORT_FILE
    return Path.cwd() / f"{sweep}-{REPORT_FILE}"


def write_sweep_report(uri: str, sweep: str | None = None, out: str | Path | None = None,
                       spec: Spec | None = None) -> Path:
    """One self-contained HTML report of a sweep read from MLflow (its trial runs): leaderboard,
    plots, and the best configuration of the sweep and of each of its methods."""
    c = client(uri)
    parent = find_sweep(c, sweep)
    name = c.get_experiment(parent.info.experiment_id).name
    metric = parent.data.tags.get("kdtune.metric", "val_acc")
    mode = parent.data.tags.get("kdtune.mode", "max")
    kids = _children(c, parent)
    records = records_from_runs(c, kids, metric)
    methods = {r.info.run_id: r.data.tags.get("kdtune.method", "") for r in kids}
    target = Path(out) if out else report_path(parent, name, spec)
    title = f"kdtune sweep {name}"
    return write_report(target, title, _sections(name, records, methods), metric, mode)


def close_stale_trials(spec: Spec, log: Log = print) -> int:
    """After a sweep ends: Optuna trials of its persisted study still RUNNING (asked for by a
    driver that was killed before Tune recorded them) are marked FAIL, so optuna-dashboard and a
    later resume never see a run that nothing is running. Returns how many."""
    url = optuna_storage_url(spec)
    if url is None:
        return 0
    try:
        storage = optuna.storages.get_storage(url)
        study_id = storage.get_study_id_from_name(spec.name)
    except Exception:  # noqa: BLE001 - no study (yet): nothing to close
        return 0
    stale = [t for t in storage.get_all_trials(study_id, deepcopy=False)
             if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if stale:
        log(f"Optuna: {len(stale)} trial(s) a killed driver had started closed as FAIL")
    return len(stale)
