"""``kdtune promote``: a trial's student → a registered MLflow model with an alias.

The model is logged with ``mlflow.pytorch.log_model`` in ``pt2`` format (torch.export: a graph
and weights, loaded without unpickling code), with an input example and signature; the kdtune
checkpoint rides along as an extra file so the version can serve as a teacher
(``models:/NAME@alias`` in ``teacher.checkpoint``; ``kdtune.tracking.registry``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kdtune.data import TensorLoader
from kdtune.spec import SpecError
from kdtune.spec.paths import CHECKPOINT
from kdtune.tracking.client import client
from kdtune.tracking.query import best_trials, run_checkpoint, run_spec
from kdtune.tracking.schema import (CHECKPOINT_DIR, MODEL_NAME, PARENT_TAG, ROLE, SWEEP_TAG,
                                    TEACHER_RUN_TAG, TRIAL_ID_TAG, _str)
from kdtune.training.checkpoint import load_student, refusal
from kdtune.training.context import student_data


def promote(uri: str, *, sweep: str | None = None, run_id: str | None = None,
            model_name: str | None = None, alias: str = "champion",
            budget: dict[str, float] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Register a run's student (default: the newest sweep's best trial) and point ``alias`` at it.

    A run without a loadable checkpoint raises SpecError before anything is written.
    """
    import mlflow  # lazy: MLflow takes seconds to import (`kdtune --help`)
    from mlflow.exceptions import MlflowException  # lazy: as above
    from mlflow.models import infer_signature  # lazy: as above

    c = client(uri)
    value = None
    if run_id:
        try:
            run = c.get_run(run_id)
        except MlflowException:
            raise SpecError(f"--run-id: no run {run_id!r} in {uri}") from None
    else:
        best = best_trials(uri, sweep, top=1, budget=budget)  # SpecError when none fits
        if not best["top"]:
            raise SpecError(f"sweep {best['sweep']!r}: no trial reported {best['metric']} yet: nothing to promote")
        run = c.get_run(best["top"][0]["run_id"])
        value = best["top"][0]["value"]
    rid = run.info.run_id
    art = run_checkpoint(c, rid)
    if art is None:
        raise SpecError(f"run {rid} ({run.info.run_name}) has no checkpoint artifact "
                        f"({CHECKPOINT_DIR}/*.pt): nothing promoted")
    exp = c.get_experiment(run.info.experiment_id)
    tags = run.data.tags
    name = model_name or (tags.get(SWEEP_TAG) or exp.name)

    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(c.download_artifacts(rid, art, d))
        try:
            model = load_student(ckpt, "cpu")  # weights only: a planted pickle is refused
        except Exception as e:  # noqa: BLE001 - a foreign or damaged file
            raise SpecError(f"run {rid}: {art} is not a loadable kdtune checkpoint ({refusal(e)})") from None
        if ckpt.name != CHECKPOINT:  # one name inside every model (teacher.pt → checkpoint.pt)
            ckpt = Path(shutil.copy2(ckpt, Path(d) / CHECKPOINT))
        example = _input_example(uri, run, model)
        with torch.no_grad():
            out = model(torch.from_numpy(example)).float().numpy()
        signature = infer_signature(example, out)
        lineage = _lineage(run, exp.name, name)

        # the fluent API logs the model into the run's experiment (a LoggedModel + the run's
        # outputs); the process's tracking URIs are put back afterwards
        # set_tracking_uri also writes $MLFLOW_TRACKING_URI (for subprocesses), and the process's
        # choice is in that variable: put it back as it was (None: MLflow's own default)
        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            info = mlflow.pytorch.log_model(
                model, name=MODEL_NAME, input_example=example, signature=signature,
                serialization_format="pt2", extra_files=[str(ckpt)], run_id=rid,
                # given, not inferred: inference loads the model in a subprocess (slow)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"],
                tags=lineage)
            mv = mlflow.register_model(info.model_uri, name, tags=lineage)
        finally:
            mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
            # a registry URI that only followed the tracking URI goes back to following it
            # (setting it explicitly would pin later `models:/` loads to the old store)
            mlflow.set_registry_uri(env["MLFLOW_REGISTRY_URI"])
            for k, v in env.items():  # set_registry_uri(None) leaves its variable behind
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    c.set_registered_model_alias(name, alias, mv.version)
    c.set_tag(rid, "kdtune.promoted", f"{name}/{mv.version}@{alias}")
    result = {"name": name, "version": mv.version, "alias": alias, "uri": f"models:/{name}@{alias}",
              "run_id": rid, "model_uri": info.model_uri, "value": value,
              "test_acc": run.data.metrics.get("test_acc")}
    log(f"promoted run {rid} ({run.info.run_name}) → models:/{name}/{mv.version}, alias @{alias}")
    return result


def _lineage(run, experiment: str, name: str) -> dict[str, str]:
    """Tags of the logged model and its version: where it came from (sweep, trial, teacher),
    its params and headline metrics; empty values left out."""
    tags = run.data.tags
    lineage = {SWEEP_TAG: tags.get(SWEEP_TAG) or name,
               "kdtune.sweep_run_id": tags.get(PARENT_TAG) or "", "kdtune.trial_run_id": run.info.run_id,
               TRIAL_ID_TAG: tags.get(TRIAL_ID_TAG, ""), TEACHER_RUN_TAG: tags.get(TEACHER_RUN_TAG, ""),
               "kdtune.method": tags.get("kdtune.method", ""), ROLE: tags.get(ROLE, ""),
               "kdtune.experiment": experiment}
    lineage.update({f"param.{k}": v for k, v in run.data.params.items()})
    for m in ("val_acc", "test_acc", "params_count"):
        if m in run.data.metrics:
            lineage[f"metric.{m}"] = run.data.metrics[m]
    return {k: _str(v) for k, v in lineage.items() if v != ""}


def _input_example(uri: str, run, model) -> np.ndarray:
    """A few real test images (preprocessed as in training) when the run's spec loads, else noise."""
    spec = None
    for rid in (run.info.run_id, run.data.tags.get(PARENT_TAG)):
        if rid and spec is None:
            try:
                spec = run_spec(uri, rid)
            except Exception:  # noqa: BLE001 - an unreadable spec: fall back to noise
                spec = None
    arch = getattr(model, "spec", {}) or {}
    if spec is not None:
        try:
            data = student_data(spec)
            x, _, _ = next(iter(TensorLoader(data.test, data, 4, shuffle=False, device="cpu")))
            return x.float().numpy()
        except Exception:  # noqa: BLE001 - data not reachable here: shapes are enough
            pass
    c, s = int(arch.get("in_channels", 3)), int(arch.get("input_size", 32))
    return np.random.default_rng(0).standard_normal((4, c, s, s)).astype("float32")
