"""The sweep: plan it, run it on Ray Tune (or resume it), pick the best trial, write best.yaml.

``plan_sweep(spec)`` says what a sweep would do without starting Ray (``--dry-run``).
``run_sweep(spec)`` prepares the teacher once, builds the Tuner (OptunaSearch + ASHA,
fractional resources) and returns a ``SweepResult``.

Best trial, everywhere: the highest (``mode: max``) ``metric`` at a trial's LAST reported epoch,
not its best epoch, the same as ``ResultGrid.get_best_result(scope="last")``. A trial ASHA
stopped early competes with the value it was stopped at.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from kdtune.config import Spec, SpecError, dump_spec, is_uri
from kdtune.tune.search import Row, SweepSpace, make_sampler, make_searcher

BEST_FILE = "best.yaml"
SPEC_FILE = "spec.yaml"
Log = Callable[[str], None]


# --------------------------------------------------------------------------- plan
@dataclass
class SweepPlan:
    spec: Spec
    rows: list[Row]                    # every parameter a trial can have
    first: list[dict[str, Any]]        # paper defaults, evaluated first
    cluster: dict[str, float] | None   # CPU/GPU of the machine (None: a remote cluster)
    concurrent: int | None             # trials at once (None: decided by the cluster)
    rungs: list[int]                   # ASHA's epochs at which trials may be stopped
    teacher: str                       # what happens to the teacher
    path: str                          # the Tune experiment: <storage>/<name>
    resumable: bool                    # a Tune experiment is already there

    def lines(self) -> list[str]:
        s, r = self.spec, self.spec.resources
        per = f"cpu {r.cpu:g}" + (f", gpu {r.gpu:g}" if r.gpu else "")
        if self.cluster is None:
            where = f"cluster {os.environ.get('RAY_ADDRESS')}: concurrency decided by its resources"
        else:
            where = (f"local: {self.cluster['CPU']:g} CPUs, {self.cluster['GPU']:g} GPUs "
                     f"→ {self.concurrent} trial(s) at once")
        sched = (f"ASHA on epoch, max_t {s.epochs}, stops at epochs {self.rungs or 'none'} "
                 f"(reduction factor {s.scheduler.reduction_factor:g})"
                 if s.scheduler.type == "asha" else f"none (every trial runs {s.epochs} epochs)")
        return [
            f"sweep {s.name}: {s.search.num_samples} trials of {'+'.join(s.methods)}, "
            f"{s.search.algorithm} (seed {s.search.seed}), {s.mode} {s.metric}",
            f"scheduler: {sched}",
            f"resources: {per} per trial; {where}",
            f"teacher: {self.teacher}",
            f"results: {self.path}" + (" (exists: --resume continues it)" if self.resumable else ""),
        ]


def experiment_path(spec: Spec) -> str:
    """<storage>/<name>: Tune's experiment folder (a local path or a URI)."""
    if is_uri(spec.storage):
        return f"{spec.storage.rstrip('/')}/{spec.name}"
    return str(spec.run_dir)


def local_resources() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def concurrency(spec: Spec, cluster: dict[str, float]) -> int:
    """Trials that fit at once: by CPU, by GPU fraction, capped by search.max_concurrent."""
    r = spec.resources
    fits = [math.floor(cluster.get("CPU", 0) / r.cpu + 1e-9)]
    if r.gpu:
        fits.append(math.floor(cluster.get("GPU", 0) / r.gpu + 1e-9))
    if spec.search.max_concurrent:
        fits.append(spec.search.max_concurrent)
    return max(0, min(fits + [spec.search.num_samples]))


def asha_rungs(spec: Spec) -> list[int]:
    if spec.scheduler.type != "asha":
        return []
    out, t = [], float(min(spec.scheduler.grace_period, spec.epochs))
    while t < spec.epochs:
        out.append(int(round(t)))
        t *= spec.scheduler.reduction_factor
    return out


def teacher_plan(spec: Spec) -> str:
    from kdtune.teacher import needs_teacher, teacher_key

    if not needs_teacher(spec):
        return f"none ({'+'.join(spec.methods)} never runs one)"
    if spec.teacher.checkpoint:
        return f"given: {spec.teacher.checkpoint}"
    cached = Path(spec.storage) / "teachers" / teacher_key(spec) / "teacher.pt"
    if cached.is_file():
        return f"cached: {cached}"
    return (f"{spec.teacher.model} trained once before the trials ({spec.teacher.epochs} epochs), "
            f"cached at {cached.parent}")


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def plan_sweep(spec: Spec, cluster: dict[str, float] | None = None) -> SweepPlan:
    """What a sweep would do; raises SpecError for a sweep that cannot run. Starts nothing."""
    space = SweepSpace(spec)
    make_sampler(spec)  # e.g. cmaes without its package
    if spec.device.startswith("cuda") and not spec.resources.gpu:
        raise SpecError("device: a CUDA device needs resources.gpu > 0 (Ray hides GPUs from "
                        "trials that did not ask for one); use device: auto")
    remote = bool(os.environ.get("RAY_ADDRESS")) and cluster is None
    if not remote:
        cluster = cluster or local_resources()
    n = None if remote else concurrency(spec, cluster)
    if n == 0:
        r = spec.resources
        raise SpecError(f"resources: a trial asks cpu {r.cpu:g}, gpu {r.gpu:g} but this machine has "
                        f"{cluster['CPU']:g} CPUs and {cluster['GPU']:g} GPUs; lower resources.* "
                        "or set RAY_ADDRESS to run on a cluster")
    path = experiment_path(spec)
    return SweepPlan(spec=spec, rows=space.rows(), first=space.default_points(),
                     cluster=None if remote else cluster, concurrent=n, rungs=asha_rungs(spec),
                     teacher=teacher_plan(spec), path=path, resumable=can_restore(path))


# --------------------------------------------------------------------------- Ray and the Tuner
def init_ray() -> None:
    """A new local Ray unless RAY_ADDRESS names a cluster; nothing if already initialised.

    A new local Ray listens on 127.0.0.1 only (its GCS, raylet, workers, agents; the dashboard
    binds 127.0.0.1 by default): nothing of a sweep on a shared machine is reachable from the
    network. To use other machines, start a cluster (`ray start`, clusters/) and set RAY_ADDRESS.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    with _private_node():
        # `local`: never attach silently to some other `ray start` cluster on this machine
        ray.init(address="local", logging_level="WARNING", _node_ip_address="127.0.0.1")


@contextmanager
def _private_node():
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
    from ray._private import ray_constants

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


def trial_name(trial) -> str:
    """``kd_003``: the method (the chosen one for a method list) and the trial's number."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    base = trial.config.get("method") or trial.trainable_name
    return f"{base}_{int(number):03d}" if number.isdigit() else f"{base}_{trial.trial_id}"


def trial_dirname(trial) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"  # the id keeps folders unique on resume


def make_scheduler(spec: Spec):
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    # time_attr "epoch": only main epochs carry it, so stage reports never advance ASHA
    return AsyncHyperBandScheduler(time_attr="epoch", max_t=spec.epochs,
                                   grace_period=min(spec.scheduler.grace_period, spec.epochs),
                                   reduction_factor=spec.scheduler.reduction_factor)


def build_tuner(spec: Spec, trainable, callbacks: Sequence[Any] = ()):
    """The Tuner for a spec and a trainable from ``make_trainable`` (resources attached)."""

    # Stage reports carry no metric by design; Tune's strict check would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # A checkpoint per epoch with num_to_keep forces a state snapshot each time; that is wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The limiter also sets how many trials Tune starts at once (without it, one at a time:
    # each waits for the previous trial's worker to start): what fits the cluster now.
    # (an autoscaling cluster may fit none yet: then as many as the sweep has)
    limit = (spec.search.max_concurrent or concurrency(spec, ray.cluster_resources())
             or spec.search.num_samples)
    searcher = ConcurrencyLimiter(make_searcher(spec), max_concurrent=limit)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=searcher,
            scheduler=make_scheduler(spec), num_samples=spec.search.num_samples,
            trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
            # a finished trial's worker runs the next one: no new process, torch import, data load
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=spec.storage if is_uri(spec.storage) else str(Path(spec.storage)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # the last two epochs
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=list(callbacks), verbose=0))  # Progress prints instead


# --------------------------------------------------------------------------- results
def last_metric(result, metric: str) -> float | None:
    """The metric at the trial's last reported epoch (None if never reported or not finite)."""
    v = (result.metrics or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def result_name(result) -> str:
    """The trial's name (``kd_003``) from its folder ``kd_003_<trial id>``."""
    return Path(result.path).name.rsplit("_", 1)[0] if result.path else "?"


def ranked(grid, spec: Spec) -> list:
    """Trials with the metric, best first (by its value at their last epoch; ties: the earlier
    trial). Failed trials rank by their last epoch too, as in ``kdtune best`` (MLflow)."""
    from kdtune.tune.trainable import trial_number

    scored = [r for r in grid if last_metric(r, spec.metric) is not None]
    sign = -1.0 if spec.mode == "max" else 1.0
    return sorted(scored, key=lambda r: (sign * last_metric(r, spec.metric),
                                         trial_number(result_name(r))))


def best_spec(spec: Spec, config: dict[str, Any], seed: int, teacher_path: str | None) -> Spec:
    """The spec ``kdtune train`` reproduces the trial with: its config as fixed params, the
    method it chose, its seed, and the very teacher it distilled from."""
    data = spec.model_dump(mode="json")
    params = dict(config)
    if isinstance(spec.method, list) and not spec.compose:
        chosen = params.pop("method")
        data["method"] = chosen
        # one method: its parameters lose the prefix (kdtune.params.resolve_params)
        params = {k.removeprefix(f"{chosen}."): v for k, v in params.items()}
    data["params"] = params
    data["seed"] = seed
    if teacher_path and not spec.teacher.checkpoint:
        data["teacher"]["checkpoint"] = teacher_path  # not retrained: the seed is the trial's
    return Spec.model_validate(data)


def write_text(path: str, text: str) -> str:
    """Write a small file to a local path or a storage URI (s3://…)."""
    if is_uri(path):
        import pyarrow.fs

        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
        return path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return path


@dataclass
class TrialRow:
    name: str
    value: float | None
    epochs: int
    status: str        # completed | stopped | error
    config: dict[str, Any]
    path: str
    error: str | None = None


@dataclass
class SweepResult:
    spec: Spec
    path: str
    trials: list[TrialRow]          # best first; then trials without the metric
    best: TrialRow | None
    best_yaml: str | None
    grid: Any = field(repr=False, default=None)

    @property
    def errors(self) -> list[TrialRow]:
        return [t for t in self.trials if t.status == "error"]


def _row(result, spec: Spec) -> TrialRow:
    m = result.metrics or {}
    epochs = int(m.get("epoch", 0) or 0)
    if result.error is not None:
        status = "error"
    else:
        status = "completed" if epochs >= spec.epochs else "stopped"
    return TrialRow(name=result_name(result), value=last_metric(result, spec.metric), epochs=epochs,
                    status=status, config=dict(result.config or {}), path=str(result.path),
                    error=(str(result.error).strip().splitlines() or ["?"])[-1]
                    if result.error is not None else None)


def summarize(grid, spec: Spec, teacher_path: str | None, log: Log = print) -> SweepResult:
    from kdtune.tune.trainable import trial_seed

    best_first = ranked(grid, spec)
    rest = [r for r in grid if all(r is not b for b in best_first)]
    rows = [_row(r, spec) for r in best_first + rest]
    path = experiment_path(spec)
    best_yaml = None
    if best_first:
        top, row = best_first[0], rows[0]
        chosen = best_spec(spec, row.config, trial_seed(spec, row.name), teacher_path)
        header = (f"# best trial of sweep {spec.name}: {row.name}, {spec.metric} "
                  f"{row.value:.4f} at epoch {row.epochs}/{spec.epochs} (its last reported epoch)\n"
                  f"# trial folder: {top.path}\n"
                  f"# reproduce: kdtune train {path}/{BEST_FILE}\n")
        best_yaml = write_text(f"{path}/{BEST_FILE}", header + dump_spec(chosen))
    else:
        log(f"no trial reported {spec.metric}: no {BEST_FILE} written")
    return SweepResult(spec=spec, path=path, trials=rows, best=rows[0] if best_first else None,
                       best_yaml=best_yaml, grid=grid)


# --------------------------------------------------------------------------- progress
class Progress(Callback):
    """Compact progress: one line per finished trial, a status line every ``every`` seconds."""

    def __init__(self, metric: str, mode: str, max_t: int, every: float = 30.0) -> None:
        self.metric, self.mode, self.max_t, self.every = metric, mode, max_t, every
        self._last = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = trial.last_result or {}
        e = r.get("epoch", 0)
        how = "done" if e >= self.max_t else f"stopped at epoch {e} (ASHA)"
        self._line(trial, f"{self.metric} {r.get(self.metric, float('nan')):.4f} · {how}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"ERROR, see {trial.path}/error.txt")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        states: dict[str, int] = {}
        for t in trials:
            states[t.status.lower()] = states.get(t.status.lower(), 0) + 1
        scored = [t for t in trials if isinstance((t.last_result or {}).get(self.metric), (int, float))]
        best = ""
        if scored:
            pick = max if self.mode == "max" else min
            b = pick(scored, key=lambda t: t.last_result[self.metric])
            best = f" · best so far {b} {self.metric} {b.last_result[self.metric]:.4f}"
        print("  " + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + best, flush=True)

    def _line(self, trial, what: str) -> None:
        params = " ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items())
        print(f"  {trial}  {what} · {params}", flush=True)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- the sweep
def run_sweep(spec: Spec, resume: bool = False, callbacks: Sequence[Any] = (),
              log: Log = print) -> SweepResult:
    """Run (or with ``resume`` continue) the sweep a spec describes; writes best.yaml."""
    from kdtune.shared import prepare_shared
    from kdtune.teacher import ensure_teacher, needs_teacher
    from kdtune.tune.trainable import make_trainable

    path = experiment_path(spec)
    exists = can_restore(path)
    if resume and not exists:
        raise SpecError(f"--resume: no sweep to resume at {path} (run it without --resume)")
    if not resume and exists:
        raise SpecError(f"name: a sweep {spec.name!r} already exists at {path}; --resume continues "
                        f"it, --set name=<new> starts another")
    plan = plan_sweep(spec)  # SpecError before Ray starts
    if not resume:
        write_text(f"{path}/{SPEC_FILE}", dump_spec(spec))
    init_ray()
    teacher = ensure_teacher(spec, log=log) if needs_teacher(spec) else None
    # once per sweep: the data view and teacher outputs every trial on this node memory-maps
    shared = prepare_shared(spec, teacher, log=log)
    trainable = make_trainable(spec, teacher, shared=shared)
    cbs = [Progress(spec.metric, spec.mode, spec.epochs), *callbacks]
    if resume:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        # the callbacks pickled with the experiment are this process's to replace
        tuner._local_tuner.get_run_config().callbacks = cbs
        log(f"resuming {path}")
    else:
        tuner = build_tuner(spec, trainable, cbs)
        for line in plan.lines()[:3]:
            log(line)
    grid = tuner.fit()
    return summarize(grid, spec, str(teacher.path) if teacher is not None else None, log)
