"""kdtune's Python API: train one configuration, run a sweep, read the best trial, promote it.

The CLI is a thin layer over these functions (parse, call, print), so a notebook gets exactly
what ``kdtune train | sweep run | best | promote`` do. Every function takes a ``Spec`` or the
path of a spec file; bad input raises ``SpecError`` (one line naming the field) before anything
starts. See ``docs/api.md``.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from kdtune.checks import load_spec
from kdtune.params.walk import resolve_params
from kdtune.promotion import promote as _promote
from kdtune.spec.paths import CHECKPOINT, experiment_path, train_dir
from kdtune.spec import parse_spec
from kdtune.spec.schema import Spec, SpecError
from kdtune.tracking.client import resolve_uri
from kdtune.tracking.preflight import check_tracking
from kdtune.tracking.query import best_trials, pareto, write_best_yaml
from kdtune.tracking.summary import (close_stale_trials, optuna_storage_url, summarize_sweep,
                                     write_sweep_report)
from kdtune.training.cache import prepare_shared
from kdtune.training.checkpoint import save_state
from kdtune.training.context import pick_device
from kdtune.training.teacher import ensure_teacher, needs_teacher
from kdtune.training.trial import run_trial
from kdtune.tune.callbacks import sweep_callbacks
from kdtune.tune.latency import measure as measure_latency
from kdtune.tune.lock import check_unlocked
from kdtune.tune.run import SweepResult, TrialRow, run_sweep

Log = Callable[[str], None]
SpecLike = Spec | str | Path

__all__ = ["BestTrials", "Promotion", "SweepResult", "TrainResult", "TrialRow", "best",
           "dashboard_command", "front", "promote", "report", "sweep", "train"]


def _spec(spec: SpecLike, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    return load_spec(spec, overrides) if isinstance(spec, (str, Path)) else spec


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    """One configuration trained: its final metrics, per-epoch history and checkpoint."""

    spec: Spec
    config: dict[str, Any]              # the flat hyperparameters it ran with
    metrics: dict[str, float]           # the last epoch's metrics (test_acc included)
    history: list[dict[str, float]]     # every main epoch's metrics, in order
    checkpoint: Path                    # weights-only loadable (kdtune.training.checkpoint.load_student)
    seconds: float

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])


def train(spec: SpecLike, *, seed: int | None = None, overrides: list[str] | tuple[str, ...] = (),
          on_epoch: Callable[[dict[str, float]], None] | None = None,
          on_stage: Callable[[dict[str, float]], None] | None = None,
          log: Log = print) -> TrainResult:
    """Train ``spec``'s configuration (``params`` fixed, paper defaults elsewhere) without Ray:
    the teacher (trained once and cached, or given), then the student. ``on_epoch`` receives
    each main epoch's metrics, ``on_stage`` each pre-stage epoch's."""
    s = _spec(spec, overrides)
    config = resolve_params(s)
    teacher = ensure_teacher(s, log=log) if needs_teacher(s) else None
    # as a sweep's trials do: the data view, and the teacher's logits computed once for the run
    # instead of once per batch every epoch, where the method reads only logits (bit for bit
    # the live teacher's; kdtune/training/cache.py). Feature methods run the teacher live.
    shared = (prepare_shared(s, teacher, log=log, device_type=pick_device(s.device).type)
              if teacher is not None else None)
    history: list[dict[str, float]] = []
    last: dict[str, Any] = {}

    def report(metrics: dict[str, float], state: dict[str, Any] | None = None, *,
               stage: bool = False) -> None:
        if stage:
            (on_stage or (lambda m: None))(metrics)
            return
        history.append(dict(metrics))
        (on_epoch or (lambda m: None))(metrics)
        if state is not None:
            last["state"] = state

    t0 = time.time()
    final = run_trial(s, config, teacher, report, seed=s.seed if seed is None else seed,
                      shared=shared)
    path = save_state(last["state"], train_dir(s, time.strftime("%Y%m%d-%H%M%S")) / CHECKPOINT)
    return TrainResult(spec=s, config=config, metrics=final, history=history, checkpoint=path,
                       seconds=time.time() - t0)


# --------------------------------------------------------------------------- sweep
def sweep(spec: SpecLike, *, resume: bool = False, overrides: list[str] | tuple[str, ...] = (),
          tracking: bool = True, log: Log = print, verbose: bool = False) -> SweepResult:
    """Run (or with ``resume`` continue) the sweep ``spec`` describes on Ray Tune, logging every
    trial to MLflow (``tracking=False``: no MLflow) and, at the end, the best trial, leaderboard
    and plots on the sweep's parent run. Writes ``<storage>/<name>/best.yaml``. ``verbose``
    shows Ray's, Tune's and MLflow's own messages too."""
    s = _spec(spec, overrides)
    check_unlocked(experiment_path(s), s.name)  # another driver runs it: say so before anything
    callbacks = sweep_callbacks(s, resume, log=log) if tracking else []
    if callbacks:  # the tracking store answers (and takes writes) before Ray starts
        check_tracking(s)
    result = run_sweep(s, resume=resume, callbacks=callbacks, log=log, verbose=verbose)
    close_stale_trials(s, log=log)  # the persisted study: no trial left RUNNING
    if callbacks:
        measure_latency(result, log=log)  # alone on the driver: trials share cores
        summarize_sweep(result, log=log)  # the answer on the parent run: best, leaderboard, plots
    return result


# --------------------------------------------------------------------------- best
@dataclass
class BestTrials:
    """A sweep's trials ranked by its metric at each trial's last reported epoch (from MLflow)."""

    sweep: str
    parent_run_id: str
    metric: str
    mode: str
    tracking_uri: str
    run_dir: str | None
    trials: int                      # child runs in the sweep
    ranked: int                      # of those, with a finite metric
    top: list[dict[str, Any]]        # rank, run_id, run_name, value, epoch, params, ...
    best_yaml: str | None = None     # written beside the sweep's results (None: not written)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        return self.top[0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _store(spec: SpecLike | None, tracking_uri: str | None) -> tuple[str, Spec | None]:
    s = _spec(spec) if spec is not None else None
    return resolve_uri(s, tracking_uri), s


def budget_of(max_params: float | None = None, max_latency_ms: float | None = None,
              max_flops: float | None = None) -> dict[str, float]:
    """A cost budget as metric maxima (None: no bound)."""
    caps = {"params_count": max_params, "latency_ms": max_latency_ms, "flops": max_flops}
    return {k: float(v) for k, v in caps.items() if v is not None}


def best(spec: SpecLike | None = None, *, sweep: str | None = None, top: int = 1,
         tracking_uri: str | None = None, write_yaml: bool = True,
         max_params: float | None = None, max_latency_ms: float | None = None,
         max_flops: float | None = None) -> BestTrials:
    """The ``top`` trials of a sweep (default: the spec's sweep, else the newest in the store);
    with ``write_yaml`` also ``best.yaml`` beside the sweep's results (not for a budget query).
    ``max_params``/``max_latency_ms``/``max_flops``: only trials within that budget (SpecError
    when none is). In a multi-objective sweep the first is the most accurate trial on the front."""
    uri, s = _store(spec, tracking_uri)
    budget = budget_of(max_params, max_latency_ms, max_flops)
    out = best_trials(uri, sweep or (s.name if s else None), top, budget=budget)
    path = write_best_yaml(uri, out) if write_yaml and not budget else None
    known = {k: out.pop(k) for k in ("sweep", "parent_run_id", "metric", "mode", "tracking_uri",
                                     "run_dir", "trials", "ranked", "top")}
    return BestTrials(**known, best_yaml=str(path) if path else None, extra=out)


# --------------------------------------------------------------------------- promote
@dataclass
class Promotion:
    """A student registered in the MLflow model registry, with an alias pointing at it."""

    name: str
    version: str
    alias: str
    uri: str                 # models:/NAME@alias
    run_id: str
    model_uri: str
    value: float | None      # the sweep's metric of the promoted trial (None for --run-id)
    test_acc: float | None
    tracking_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote(spec: SpecLike | None = None, *, sweep: str | None = None, run_id: str | None = None,
            model_name: str | None = None, alias: str = "champion",
            tracking_uri: str | None = None, max_params: float | None = None,
            max_latency_ms: float | None = None, max_flops: float | None = None,
            log: Log = _quiet) -> Promotion:
    """Register a sweep's best trial (or ``run_id``) as a new model version and set ``alias``;
    with a budget, the most accurate trial within it (SpecError when none fits)."""
    uri, s = _store(spec, tracking_uri)
    out = _promote(uri, sweep=sweep or (s.name if s and not run_id else None), run_id=run_id,
                   model_name=model_name, alias=alias,
                   budget=budget_of(max_params, max_latency_ms, max_flops), log=log)
    return Promotion(**{k: out[k] for k in ("name", "version", "alias", "uri", "run_id",
                                            "model_uri", "value", "test_acc")},
                     tracking_uri=uri)


def front(spec: SpecLike | None = None, *, sweep: str | None = None,
          tracking_uri: str | None = None) -> dict[str, Any]:
    """The Pareto front of a sweep's full-length trials (``kdtune best --pareto``)."""
    uri, s = _store(spec, tracking_uri)
    return pareto(uri, sweep or (s.name if s else None))


# --------------------------------------------------------------------------- report, dashboard
def report(spec: SpecLike | None = None, *, sweep: str | None = None,
           tracking_uri: str | None = None, out: str | Path | None = None) -> Path:
    """Write one self-contained HTML report of a sweep (default: the spec's, else the newest)
    from MLflow: leaderboard, plots, each method's best configuration. Default file:
    ``<storage>/<name>/report.html``. Returns its path."""
    uri, s = _store(spec, tracking_uri)
    return write_sweep_report(uri, sweep or (s.name if s else None), out, s)


def dashboard_command(spec: SpecLike | None = None, *, port: int = 8080) -> list[str]:
    """The ``optuna-dashboard`` command line for the sweeps' Optuna studies, on 127.0.0.1."""
    s = _spec(spec) if spec is not None else parse_spec({})
    url = optuna_storage_url(s)
    if url is None:
        raise SpecError("tracking.uri: the tracking store is a server, so the Optuna studies are "
                        "kept only where KDTUNE_OPTUNA_STORAGE names a database (e.g. "
                        "postgresql://…/optuna): set it for the sweep and for this command")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SpecError(f"storage: no Optuna studies at {url} yet (run `kdtune sweep run` first)")
    exe = Path(sys.executable).with_name("optuna-dashboard")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("optuna-dashboard") or "optuna-dashboard"]
    return cmd + [url, "--host", "127.0.0.1", "--port", str(port)]
