"""The sweep: run it on Ray Tune (or resume it), rank the trials, write best.yaml.

``run_sweep(spec)`` prepares the teacher and the shared cache once, builds the Tuner
(OptunaSearch + ASHA, fractional resources) and returns a ``SweepResult``. The ranking is
``kdtune.tune.results``'s, the same as ``kdtune best`` reads from MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow.fs
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from kdtune.params.walk import METHOD_KEY, STUDENT, unprefixed, with_student
from kdtune.spec.load import dump_spec
from kdtune.spec.paths import BEST_FILE, SPEC_FILE, experiment_path, is_uri
from kdtune.spec.schema import Spec, SpecError
from kdtune.training.cache import prepare_shared
from kdtune.training.teacher import ensure_teacher, needs_teacher
from kdtune.tune._ray_compat import init_local_loopback, replace_callbacks
from kdtune.tune._ray_compat import trial_number as ray_trial_number
from kdtune.tune.gpu_cache import build_on_gpu_node
from kdtune.tune import session
from kdtune.tune.guard import Guard, SweepFailing
from kdtune.tune.lock import driver_lock
from kdtune.tune.naming import make_name, trial_seed
from kdtune.tune.plan import can_restore, concurrency, plan_sweep
from kdtune.tune.progress import Progress
from kdtune.tune.quiet import quiet
from kdtune.tune.results import best_yaml_text, finite, ranked
from kdtune.tune.schedule import make_scheduler
from kdtune.tune.state import check_state
from kdtune.tune.search import make_searcher
from kdtune.tune.trainable import make_trainable

Log = Callable[[str], None]


def init_ray(log: Log = print) -> None:
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
    session.cleanup(log=log)  # Ray processes of an earlier driver killed with SIGKILL
    init_local_loopback(logging_level="WARNING")
    session.record()


def trial_name(trial) -> str:
    """``kd_003``: the method (the chosen one for a method list) and the trial's number."""
    base = trial.config.get(METHOD_KEY) or trial.trainable_name
    return make_name(base, ray_trial_number(trial), trial.trial_id)


def trial_dirname(trial) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"  # the id keeps folders unique on resume


def tune_env() -> None:
    """Tune settings every sweep needs, new or resumed (read by Tune's controller)."""
    # Stage reports carry no metric by design; Tune's strict check would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # A checkpoint per epoch with num_to_keep forces a state snapshot each time; that is wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def build_tuner(spec: Spec, trainable, callbacks: Sequence[Any] = (), stop: Any = None):
    """The Tuner for a spec and a trainable from ``make_trainable`` (resources attached)."""
    tune_env()
    # The limiter also sets how many trials Tune starts at once (without it, one at a time:
    # each waits for the previous trial's worker to start): what fits the cluster now.
    # (an autoscaling cluster may fit none yet: then as many as the sweep has)
    limit = (spec.search.max_concurrent or concurrency(spec, ray.cluster_resources())
             or spec.search.num_samples)
    searcher = ConcurrencyLimiter(make_searcher(spec), max_concurrent=limit)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.objective, mode=spec.direction, search_alg=searcher,
            scheduler=make_scheduler(spec), num_samples=spec.search.num_samples,
            trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
            # a finished trial's worker runs the next one: no new process, torch import, data load
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=spec.storage if is_uri(spec.storage) else str(Path(spec.storage)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # the last two epochs
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=list(callbacks), stop=stop, verbose=0))  # Progress prints instead


def last_metric(result, metric: str) -> float | None:
    """The metric at the trial's last reported epoch (None if never reported or not finite)."""
    return finite((result.metrics or {}).get(metric))


def result_name(result) -> str:
    """The trial's name (``kd_003``) from its folder ``kd_003_<trial id>``."""
    return Path(result.path).name.rsplit("_", 1)[0] if result.path else "?"


def ranked_results(grid, spec: Spec) -> list:
    """Tune results with the metric, best first (``kdtune.tune.results.ranked``). Failed trials
    rank by their last epoch too, as in ``kdtune best`` (MLflow)."""
    if spec.multi_objective:  # the most accurate trial on the front: full-length trials only
        grid = [r for r in grid if int((r.metrics or {}).get("epoch", 0) or 0) >= spec.epochs]
    return ranked(grid, lambda r: (r.metrics or {}).get(spec.objective), result_name, spec.direction)


def best_spec(spec: Spec, config: dict[str, Any], seed: int, teacher_path: str | None) -> Spec:
    """The spec ``kdtune train`` reproduces the trial with: its config as fixed params, the
    method it chose, its seed, and the very teacher it distilled from."""
    data = with_student(spec, config).model_dump(mode="json")
    data["search"]["student"] = {}  # the trial's architecture is now the spec's student
    params = {k: v for k, v in config.items() if not k.startswith(STUDENT)}
    if isinstance(spec.method, list) and not spec.compose:
        data["method"] = chosen = params[METHOD_KEY]
        params = unprefixed(spec, params, chosen)  # one method: no prefixes
    data["params"] = params
    data["seed"] = seed
    if teacher_path and not spec.teacher.checkpoint:
        data["teacher"]["checkpoint"] = teacher_path  # not retrained: the seed is the trial's
    return Spec.model_validate(data)


def started(path: str) -> bool:
    """A sweep was started at ``path`` (its spec.yaml is there), Tune's experiment or not."""
    if is_uri(path):
        fs, p = pyarrow.fs.FileSystem.from_uri(f"{path}/{SPEC_FILE}")
        return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound
    return Path(path, SPEC_FILE).is_file()


def write_text(path: str, text: str) -> str:
    """Write a small file to a local path or a storage URI (s3://…)."""
    if is_uri(path):
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
    return TrialRow(name=result_name(result), value=last_metric(result, spec.objective), epochs=epochs,
                    status=status, config=dict(result.config or {}), path=str(result.path),
                    error=(str(result.error).strip().splitlines() or ["?"])[-1]
                    if result.error is not None else None)


def summarize(grid, spec: Spec, teacher_path: str | None, log: Log = print) -> SweepResult:
    best_first = ranked_results(grid, spec)
    rest = [r for r in grid if all(r is not b for b in best_first)]
    rows = [_row(r, spec) for r in best_first + rest]
    path = experiment_path(spec)
    best_yaml = None
    if best_first:
        top, row = best_first[0], rows[0]
        chosen = best_spec(spec, row.config, trial_seed(spec, row.name), teacher_path)
        text = best_yaml_text(sweep=spec.name, trial=row.name, metric=spec.objective, value=row.value,
                              epoch=row.epochs, epochs=spec.epochs, source=f"trial folder: {top.path}",
                              target=f"{path}/{BEST_FILE}", spec_yaml=dump_spec(chosen))
        best_yaml = write_text(f"{path}/{BEST_FILE}", text)
    else:
        log(f"no trial reported {spec.objective}: no {BEST_FILE} written")
    return SweepResult(spec=spec, path=path, trials=rows, best=rows[0] if best_first else None,
                       best_yaml=best_yaml, grid=grid)


def run_sweep(spec: Spec, resume: bool = False, callbacks: Sequence[Any] = (),
              log: Log = print, verbose: bool = False) -> SweepResult:
    """Run (or with ``resume`` continue) the sweep a spec describes; writes best.yaml.
    Ray's, Tune's and MLflow's own messages are hidden unless ``verbose`` (``kdtune.tune.quiet``)."""
    quiet(verbose)
    path = experiment_path(spec)
    exists = can_restore(path)
    if resume and not exists:
        if not started(path):
            raise SpecError(f"--resume: no sweep to resume at {path} (run it without --resume)")
        # killed before its first trial (e.g. while training the teacher): start the trials
        log(f"resuming {path}: no trial had started yet")
        resume = False
    if not resume and exists:
        raise SpecError(f"name: a sweep {spec.name!r} already exists at {path}; --resume continues "
                        f"it, --set name=<new> starts another")
    plan = plan_sweep(spec)  # SpecError before Ray starts
    with driver_lock(path, spec.name):  # one driver per sweep (a second --resume is refused)
        return _run(spec, path, plan, resume, callbacks, log)


def _run(spec: Spec, path: str, plan, resume: bool, callbacks: Sequence[Any],
         log: Log) -> SweepResult:
    # a snapshot the killed driver left cut short: Tune would restart the experiment from zero
    rewrite_tuner = check_state(path, log) if resume else False
    if not resume:
        write_text(f"{path}/{SPEC_FILE}", dump_spec(spec))
    init_ray(log)
    teacher = ensure_teacher(spec, log=log) if needs_teacher(spec) else None
    # once per sweep: the data view and teacher outputs every trial on this node memory-maps
    shared = prepare_shared(spec, teacher, log=log)
    shared = build_on_gpu_node(spec, teacher, shared, log=log)  # GPU trials, CPU driver
    trainable = make_trainable(spec, teacher, shared=shared)
    guard = Guard(spec.max_consecutive_failures)
    cbs = [Progress(spec.objective, spec.direction, spec.epochs, num_samples=spec.search.num_samples),
           guard, session.Recorder(), *callbacks]
    if resume:
        tune_env()  # a resumed sweep in a fresh process: build_tuner never ran here
        if rewrite_tuner:  # cut short as the sweep started: a new Tuner writes it again
            build_tuner(spec, trainable, cbs, stop=guard)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        # the callbacks pickled with the experiment are this process's to replace
        replace_callbacks(tuner, cbs, stop=guard)
        log(f"resuming {path}")
    else:
        tuner = build_tuner(spec, trainable, cbs, stop=guard)
        for line in plan.lines()[:3]:
            log(line)
    grid = tuner.fit()
    if guard.fatal is not None:  # the spec's own error: every trial would have hit it
        trial, error = guard.fatal
        raise SpecError(f"{error} (trial {trial}; not retried, the sweep stopped: fix the spec, "
                        f"then run it again with --resume or a new name)")
    result = summarize(grid, spec, str(teacher.path) if teacher is not None else None, log)
    if guard.stop_all():
        raise SweepFailing(f"the sweep stopped after {len(guard.streak)} trials failed in a row "
                           f"(max_consecutive_failures); commonest error: {guard.commonest()}")
    return result
