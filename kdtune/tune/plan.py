"""What a sweep would do, said before anything starts (``kdtune sweep run --dry-run``).

``plan_sweep(spec)`` raises SpecError for a sweep that cannot run (resources, sampler, device)
and starts nothing: no Ray, no teacher, no files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from ray import tune

from kdtune.params.walk import Row, SweepSpace
from kdtune.spec.paths import TEACHER_FILE, experiment_path, teachers_dir
from kdtune.spec.schema import Spec, SpecError
from kdtune.training.teacher import needs_teacher, teacher_key
from kdtune.tune.schedule import grace_period
from kdtune.tune.search import make_sampler
from kdtune.tune.warm import observations


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
    warm: int = 0                      # observations from earlier sweeps (search.warm_start)

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
            f"{s.search.algorithm} (seed {s.search.seed}), "
            + ", ".join(f"{d} {m}" for m, d in s.objectives)
            + ("; constraints " + ", ".join(f"{k} {b.model_dump(exclude_none=True)}"
                                           for k, b in s.constraints.items()) if s.constraints else ""),
            f"scheduler: {sched}",
            f"resources: {per} per trial; {where}",
            f"teacher: {self.teacher}",
            f"results: {self.path}" + (" (exists: --resume continues it)" if self.resumable else ""),
        ] + ([f"warm start: {self.warm} finished trial(s) of {', '.join(s.search.warm_start)} "
              "as observations before the first new trial"] if s.search.warm_start else [])


def local_resources() -> dict[str, float]:
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
    out, t = [], float(grace_period(spec))
    while t < spec.epochs:
        out.append(int(round(t)))
        t *= spec.scheduler.reduction_factor
    return out


def teacher_plan(spec: Spec) -> str:
    if not needs_teacher(spec):
        return f"none ({'+'.join(spec.methods)} never runs one)"
    if spec.teacher.checkpoint:
        return f"given: {spec.teacher.checkpoint}"
    cached = teachers_dir(spec) / teacher_key(spec) / TEACHER_FILE
    if cached.is_file():
        return f"cached: {cached}"
    return (f"{spec.teacher.model} trained once before the trials ({spec.teacher.epochs} epochs), "
            f"cached at {cached.parent}")


def can_restore(path: str) -> bool:
    """A Tune experiment is at ``path`` (``--resume`` continues it)."""
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
                     teacher=teacher_plan(spec), path=path, resumable=can_restore(path),
                     warm=len(observations(spec, log=lambda m: None)))


