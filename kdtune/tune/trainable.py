"""The Ray Tune function trainable: one ``run_trial`` per trial, reported to Tune.

``make_trainable(spec, teacher)`` builds a fresh function named after the spec's method (``kd``;
for a method list the spec's name), so Tune names trials ``kd_...``. Each trial:

- reads the teacher by path (the driver prepared it once with ``ensure_teacher``);
- seeds from ``search.seed`` + its trial number (stable across retries and ``--resume``);
- resumes from ``tune.get_checkpoint()`` (the engine's state dict, ``checkpoint.pt``);
- reports every main epoch with a checkpoint, and stage epochs as ``stage/...`` keys with no
  ``epoch`` and no metric, which ASHA ignores (``AsyncHyperBandScheduler.on_trial_result``
  returns CONTINUE when ``time_attr`` or the metric is missing) and the searcher skips
  (``MainEpochOptunaSearch``);
- raises on failure (``NonFiniteLoss`` included): Tune records the error in the trial's
  ``error.txt``, retries up to ``max_failures`` times from the last checkpoint, and the sweep
  goes on.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import ray
from ray import tune

from kdtune.limits import memory_limit
from kdtune.spec.paths import CHECKPOINT
from kdtune.spec.schema import Spec, SpecError
from kdtune.training.checkpoint import load_state, save_state
from kdtune.training.ops import NonFiniteLoss
from kdtune.training.ship import localize, read_bundle
from kdtune.training.teacher import TeacherArtifact
from kdtune.training.trial import Infeasible, run_trial
from kdtune.tune.naming import trainable_name, trial_seed

RunTrial = Callable[..., dict[str, float]]
FATAL_KEY = "kdtune_fatal"  # a trial's last result when the spec itself failed (not retried)
INFEASIBLE_KEY = "kdtune_infeasible"  # ... when its sampled architecture cannot be used
NODE_KEY = "kdtune_node_id"  # the Ray node a trial ran on (first main epoch's result)
SHAPE_ERROR = re.compile(r"shape|size mismatch|must match the size|mat1 and mat2")


def make_trainable(spec: Spec, teacher: TeacherArtifact | None, run: RunTrial = run_trial,
                   shared: dict[str, Any] | None = None):
    """The Tune trainable for a spec, with its per-trial resources attached.

    ``run`` is ``kdtune.training.trial.run_trial``; tests pass a stand-in with the same signature.
    ``shared``: the files the driver prepared (``kdtune.training.cache.prepare_shared``), by path,
    and the same files as a bundle for nodes that cannot see them (``kdtune.training.ship``):
    ``with_parameters`` puts it in Ray's object store once; Ray moves it to each node once.
    """
    name = trainable_name(spec)

    def trainable(config: dict[str, Any], spec_json: str, teacher_ref: dict | None,
                  run: RunTrial, shared_ref: dict | None = None, bundle: dict | None = None) -> None:
        run_in_tune(config, spec_json, teacher_ref, run, localize(shared_ref, bundle))

    # A new function object per spec: renaming it names the trials without touching others.
    trainable.__name__ = trainable.__qualname__ = name
    ref = {"path": str(teacher.path), "meta": teacher.meta} if teacher is not None else None
    fn = tune.with_parameters(trainable, spec_json=spec.model_dump_json(), teacher_ref=ref, run=run,
                              shared_ref=shared, bundle=read_bundle(shared) if shared else None)
    res = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.memory_gb:  # Ray schedules by it too (no more trials than memory allows)
        res["memory"] = int(spec.resources.memory_gb * (1 << 30))
    return tune.with_resources(fn, res)


def run_in_tune(config: dict[str, Any], spec_json: str, teacher_ref: dict | None,
                run: RunTrial, shared_ref: dict | None = None) -> None:
    """The body of every trial (runs in a Ray worker)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    spec = Spec.model_validate_json(spec_json)  # paths were made absolute by the driver
    ctx = tune.get_context()
    seed = trial_seed(spec, ctx.get_trial_name())
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch reads it only at import, be explicit.
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    teacher = TeacherArtifact(Path(teacher_ref["path"]), teacher_ref["meta"]) if teacher_ref else None

    restore = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restore = load_state(Path(d) / CHECKPOINT)

    checked: list[bool] = []
    staged: list[bool] = []
    last_saved = time.monotonic()  # when this trial last checkpointed (or started)

    def report(metrics: dict[str, float], state: dict[str, Any] | None = None, *,
               stage: bool = False) -> None:
        nonlocal last_saved
        if stage:
            staged.append(True)
        if not stage and not checked:
            missing = [m for m, _ in spec.objectives if m not in metrics]
            if missing:
                raise SpecError(f"metric: {missing[0]!r} is never reported; the trial reports "
                                f"{', '.join(sorted(metrics))}")
            checked.append(True)
            # where it ran (MLflow tag kdtune.node_id, with kdtune.teacher_cache: callbacks.py)
            metrics = {**metrics, NODE_KEY: ray.get_runtime_context().get_node_id()}
        if stage:
            # no `epoch` (ASHA's time_attr) and no metric: the scheduler and searcher skip it
            metrics = {k: v for k, v in metrics.items() if k.startswith("stage/")}
        if (state is not None and not stage and metrics.get("epoch", 0) < spec.epochs
                and time.monotonic() - last_saved < spec.checkpoint_every_s):
            state = None  # spec.checkpoint_every_s: too soon after the last one
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="kdtune-ckpt-") as d:
            save_state(state, Path(d) / CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))  # copied to storage
        last_saved = time.monotonic()

    # `auto` is the GPU Ray assigned: it sets CUDA_VISIBLE_DEVICES, so it is cuda:0 here.
    device = "auto" if spec.device.startswith("cuda") else spec.device

    try:
        with memory_limit(spec.resources.memory_gb):  # restored after: the worker is reused
            extra = {"shared": shared_ref} if shared_ref else {}  # memory-mapped data, teacher outputs
            run(spec, dict(config), teacher, report, seed=seed, restore=restore, device=device, **extra)
    except Infeasible as e:  # a sampled architecture: the sweep goes on without it
        tune.report({INFEASIBLE_KEY: e.reason, **e.costs})
    except Exception as e:  # noqa: BLE001 - classified, then re-raised or reported as fatal
        if not spec_fault(e, started=bool(checked), staged=bool(staged) or restore is not None):
            raise  # a crash: Tune retries it from its checkpoint (max_failures)
        # The spec's own error: every trial would hit it, so it is not retried. The trial ends
        # with a FATAL_KEY result that stops the sweep (tune/guard.py) and its error.txt.
        text = traceback.format_exc()
        Path(ctx.get_trial_dir()).mkdir(parents=True, exist_ok=True)
        (Path(ctx.get_trial_dir()) / "error.txt").write_text(text)
        tune.report({FATAL_KEY: one_line(e)})


def one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return first if isinstance(e, SpecError) else f"{type(e).__name__}: {first}"


def spec_fault(e: BaseException, *, started: bool, staged: bool) -> bool:
    """Whether an error is a property of the spec, not of the run: a SpecError before the first
    main epoch, or a bad argument / shape (TypeError, ValueError, a shape RuntimeError) before
    anything was trained (building the model, the method, the first batch)."""
    if started or isinstance(e, (MemoryError, torch.OutOfMemoryError, NonFiniteLoss)):
        return False
    if isinstance(e, SpecError):
        return True
    if staged:
        return False
    if isinstance(e, (TypeError, ValueError)):
        return True
    return isinstance(e, RuntimeError) and bool(SHAPE_ERROR.search(str(e)))
