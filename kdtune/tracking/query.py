"""The read side: sweeps in a store, a sweep's best trials, a run's spec and checkpoint, and
``best.yaml`` written from MLflow (the same ranking and header as the sweep's own).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kdtune.redact import redact
from kdtune.spec import Spec, SpecError, parse_spec
from kdtune.spec.paths import BEST_FILE, SPEC_FILE, run_dir
from kdtune.tracking.client import client
from kdtune.tracking.schema import (CHECKPOINT_DIR, PARENT_TAG, ROLE, SWEEP, TEACHER_RUN_TAG,
                                    TRIAL_ID_TAG)
from kdtune.tune.results import best_yaml_text, finite, non_dominated, ranked

COSTS = ("params_count", "flops", "size_mb", "latency_ms")


def list_sweeps(uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Parent runs (newest first): experiment, run id, start, status, trials, best value."""
    c = client(uri)
    exps = [e for e in c.search_experiments() if name is None or e.name == name]
    if not exps:
        return []
    names = {e.experiment_id: e.name for e in exps}
    parents = c.search_runs(list(names), filter_string=f"tags.`{ROLE}` = '{SWEEP}'",
                            order_by=["attributes.start_time DESC"], max_results=1000)
    out = []
    for p in parents:
        metric = p.data.tags.get("kdtune.metric", "val_acc")
        mode = p.data.tags.get("kdtune.mode", "max")
        kids = _children(c, p)
        vals = [v for v in (finite(r.data.metrics.get(metric)) for r in kids) if v is not None]
        out.append({"sweep": names[p.info.experiment_id], "run_id": p.info.run_id,
                    "run_name": p.info.run_name, "started": _iso(p.info.start_time),
                    "status": p.info.status, "trials": len(kids),
                    "failed": sum(r.info.status == "FAILED" for r in kids), "metric": metric,
                    "best": (max(vals) if mode == "max" else min(vals)) if vals else None})
    return out


def find_sweep(c, sweep: str | None = None):
    """The newest parent run, in experiment ``sweep`` (a name) or in the whole store."""
    if sweep:
        exp = c.get_experiment_by_name(sweep)
        if exp is None:
            raise SpecError(f"--sweep: no experiment {sweep!r} in the tracking store "
                            "(see `kdtune sweep list`)")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string=f"tags.`{ROLE}` = '{SWEEP}'",
                         order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not runs:
        raise SpecError(f"no sweep{' ' + repr(sweep) if sweep else ''} in the tracking store "
                        "(run `kdtune sweep run SPEC` first)")
    return runs[0]


def objectives(parent) -> list[tuple[str, str]]:
    """(metric, mode) of each objective of a sweep, from its parent run's tags."""
    text = parent.data.tags.get("kdtune.objectives")
    if text:
        return [tuple(x.rsplit(":", 1)) for x in text.split(",")]  # type: ignore[misc]
    return [(parent.data.tags.get("kdtune.metric", "val_acc"), parent.data.tags.get("kdtune.mode", "max"))]


def full_length(r) -> bool:
    """A trial that ran its full epochs (FINISHED, not stopped early, not infeasible)."""
    return (r.info.status == "FINISHED" and not r.data.tags.get("kdtune.stopped_early")
            and not r.data.tags.get("kdtune.infeasible"))


def within(r, budget: dict[str, float]) -> bool:
    """A run whose cost metrics are at most the budget's (a missing cost does not fit)."""
    return all((v := finite(r.data.metrics.get(k))) is not None and v <= cap for k, cap in budget.items())


def best_trials(uri: str, sweep: str | None = None, top: int = 1,
                budget: dict[str, float] | None = None) -> dict[str, Any]:
    """The sweep's trials ranked by its (first) metric at each trial's last reported epoch.

    MLflow's ``metrics.<name>`` of a run is its latest value (the highest step = the last
    epoch), which is exactly "the metric at the trial's last reported epoch". In a
    multi-objective sweep only full-length trials are ranked (the most accurate trial on the
    front comes first); ``budget`` ({"params_count": 20000, "latency_ms": 2}) keeps only the
    trials within it.
    """
    c = client(uri)
    parent = find_sweep(c, sweep)
    objs = objectives(parent)
    (metric, mode), multi = objs[0], len(objs) > 1
    children = _children(c, parent)
    # the ranking's ties go to the lower trial number; runs with the same number (or none)
    # keep start order, since the sort is stable
    by_start = sorted(children, key=lambda r: r.info.start_time or 0)
    pool = [r for r in by_start if (not multi or full_length(r)) and within(r, budget or {})]
    if budget and not pool:
        shown = ", ".join(f"{k} <= {v:g}" for k, v in budget.items())
        raise SpecError(f"budget: no trial of sweep {parent.data.tags.get('kdtune.sweep')!r} has "
                        f"{shown} (see `kdtune best --pareto`)")
    kids = ranked(pool, lambda r: r.data.metrics.get(metric), lambda r: r.info.run_name, mode)
    exp = c.get_experiment(parent.info.experiment_id)
    rows = []
    for i, r in enumerate(kids[: max(top, 0)]):
        rows.append({"rank": i + 1, "run_id": r.info.run_id, "trial_id": r.data.tags.get(TRIAL_ID_TAG),
                     "run_name": r.info.run_name, "status": r.info.status, metric: r.data.metrics[metric],
                     "value": r.data.metrics[metric], "test_acc": r.data.metrics.get("test_acc"),
                     "epoch": _last_step(c, r, metric), "params": _typed(r.data.params),
                     "teacher_run_id": r.data.tags.get(TEACHER_RUN_TAG),
                     "costs": {k: r.data.metrics[k] for k in COSTS if k in r.data.metrics}})
    return {"sweep": exp.name, "parent_run_id": parent.info.run_id, "metric": metric, "mode": mode,
            "tracking_uri": uri, "run_dir": parent.data.tags.get("kdtune.run_dir"),
            "trials": len(children), "ranked": len(kids), "top": rows,
            "objectives": [list(o) for o in objs], "budget": budget or {}}


def run_spec(uri: str, run_id: str) -> Spec | None:
    """The spec a run was made with (a trial's spec has its params fixed)."""
    text = _read_text(client(uri), run_id, SPEC_FILE)
    if text is None:
        return None
    return parse_spec(yaml.safe_load(text))


def write_best_yaml(uri: str, best: dict[str, Any], path: str | Path | None = None) -> Path | None:
    """best.yaml beside the sweep's results (``<storage>/<name>/best.yaml``): the full spec with
    the best trial's parameters fixed, i.e. the ``spec.yaml`` its run carries (made by the sweep's
    own ``kdtune.tune.run.best_spec``, so ``sweep run`` and ``best`` write the same spec)."""
    if not best["top"]:
        return None
    top = best["top"][0]
    text = _read_text(client(uri), top["run_id"], SPEC_FILE)
    if text is None:
        return None
    folder = best.get("run_dir")
    if not folder or Path(folder).name != best["sweep"]:  # a tag is data: <storage>/<sweep> only
        folder = str(run_dir(parse_spec(yaml.safe_load(text))))
    target = Path(path) if path else Path(folder) / BEST_FILE
    if "://" in str(target):
        return None  # remote storage: the run's spec.yaml artifact is the copy
    content = best_yaml_text(sweep=best["sweep"], trial=top["run_name"], metric=best["metric"],
                             value=top["value"], epoch=top["epoch"], epochs=None,
                             source=f"MLflow run {top['run_id']} in {redact(uri)}",
                             target=str(target), spec_yaml=text)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return target


def run_checkpoint(c, run_id: str) -> str | None:
    """The artifact path of a run's kdtune checkpoint (``checkpoint/*.pt``), or None."""
    try:
        files = c.list_artifacts(run_id, CHECKPOINT_DIR)
    except Exception:  # noqa: BLE001 - no such run or folder: no checkpoint
        return None
    pts = sorted(f.path for f in files if not f.is_dir and f.path.endswith(".pt"))
    return next((p for p in pts if p.endswith("/checkpoint.pt")), pts[0] if pts else None)


def _children(c, parent) -> list:
    """A parent run's trial runs."""
    return child_runs(c, parent.info.experiment_id, parent.info.run_id)


def child_runs(c, exp_id: str, parent_id: str, page_size: int = 1000) -> list:
    """Every child run of a parent, page by page (one page stops at MLflow's max_results)."""
    out: list = []
    token = None
    while True:
        page = c.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                             max_results=page_size, page_token=token)
        out += page
        token = page.token
        if not token:
            return out


def _iso(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else None


def _last_step(c, run, metric: str) -> int | None:
    """The epoch of a run's latest ``metric`` (its highest step)."""
    hist = c.get_metric_history(run.info.run_id, metric)
    return max((m.step for m in hist), default=None)


def _typed(params: dict[str, str]) -> dict[str, Any]:
    """MLflow's string params back as YAML values ("0.1" → 0.1; unparsable text stays text)."""
    out = {}
    for k, v in params.items():
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k] = v
    return out


def _read_text(c, run_id: str, path: str) -> str | None:
    """A run's text artifact, or None when it has none."""
    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(c.download_artifacts(run_id, path, d)).read_text()
    except Exception:  # noqa: BLE001 - an absent artifact
        return None


def finished_trials(uri: str, sweep: str) -> dict[str, Any]:
    """A sweep's trials that ran their full epochs (FINISHED, not stopped early), as plain data
    for a warm start: ``{"metric", "mode", "trials": [{"name", "params", "value"}]}``."""
    c = client(uri)
    parent = find_sweep(c, sweep)
    metric = parent.data.tags.get("kdtune.metric", "val_acc")
    out = []
    for r in _children(c, parent):
        value = finite(r.data.metrics.get(metric))
        if r.info.status != "FINISHED" or value is None or r.data.tags.get("kdtune.stopped_early"):
            continue
        out.append({"name": r.info.run_name, "params": _typed(r.data.params), "value": value})
    return {"metric": metric, "mode": parent.data.tags.get("kdtune.mode", "max"), "trials": out}


def pareto(uri: str, sweep: str | None = None) -> dict[str, Any]:
    """The non-dominated full-length trials of a (multi-objective) sweep, sorted by the first
    objective (best first); for a one-metric sweep: the trade-off of its metric against
    params_count."""
    c = client(uri)
    parent = find_sweep(c, sweep)
    objs = objectives(parent)
    if len(objs) == 1:
        objs = [objs[0], ("params_count", "min")]
    runs = [r for r in _children(c, parent) if full_length(r)]
    front = non_dominated(runs, lambda r: [r.data.metrics.get(m) for m, _ in objs], [d for _, d in objs])
    front = ranked(front, lambda r: r.data.metrics.get(objs[0][0]), lambda r: r.info.run_name, objs[0][1])
    return {"sweep": c.get_experiment(parent.info.experiment_id).name, "objectives": [list(o) for o in objs],
            "tracking_uri": uri, "front": [
                {"run_id": r.info.run_id, "run_name": r.info.run_name,
                 **{m: r.data.metrics[m] for m, _ in objs},
                 "costs": {k: r.data.metrics[k] for k in COSTS if k in r.data.metrics},
                 "params": _typed(r.data.params)} for r in front]}
