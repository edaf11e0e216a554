"""The teacher-output cache for GPU trials when the driver has no GPU (a CPU head node).

The cache must be computed on the trials' device type: on CUDA the teacher runs under bf16
autocast and cuDNN picks kernels per shape, so CPU-computed outputs would not equal what a
trial's live teacher gives (``kdtune.training.cache``: a trial refuses a cache computed on
another device type). So a driver that cannot see a GPU hands the job to one 1-GPU Ray task:
it receives the teacher checkpoint and the data view through the object store, runs the same
``build_teacher_outputs`` (self-check included) on its GPU and returns the result as a bundle
(``kdtune.training.ship``). The driver writes it under the sweep's cache folder; from there
trials map it, or receive it in their own bundle on nodes that cannot see the driver's files.
If no GPU node is there, or the task fails, trials run the teacher live and one line says why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from kdtune.spec.paths import cache_dir
from kdtune.spec.schema import Spec
from kdtune.training.cache import (GPU_NEEDS_KEY, _write, build_teacher_outputs, outputs_key,
                                   trial_data)
from kdtune.training.ship import localize, read_bundle
from kdtune.training.teacher import TeacherArtifact

TIMEOUT_S = 300  # waiting for a GPU node (an autoscaler may have to start one); then live


def build_on_gpu_node(spec: Spec, teacher: TeacherArtifact | None, shared: dict[str, Any] | None,
                      log: Callable[[str], None] = print, timeout_s: float = TIMEOUT_S,
                      device_type: str = "cuda") -> dict[str, Any] | None:
    """``shared`` with ``outputs`` built in a 1-GPU task where ``prepare_shared`` asked for it
    (trials on GPUs the driver lacks); unchanged otherwise. ``device_type`` is for tests."""
    if not shared or not shared.get(GPU_NEEDS_KEY) or teacher is None:
        return shared
    out = {k: v for k, v in shared.items() if k != GPU_NEEDS_KEY}
    needs = tuple(shared[GPU_NEEDS_KEY])
    folder = cache_dir(spec) / "teacher-outputs" / outputs_key(teacher.path, spec, needs, device_type)
    if (folder / "meta.json").is_file():  # built for an earlier run of this sweep (--resume)
        return {**out, "outputs": str(folder)}
    if ray.cluster_resources().get("GPU", 0) < 1:
        log("teacher outputs: trials run on GPUs and the cluster has none yet: live teacher")
        return out
    task = ray.remote(num_gpus=1, num_cpus=1, max_retries=0)(remote_build)
    data = read_bundle({"data": shared["data"]}).get("data") if shared.get("data") else None
    log("teacher outputs: trials run on GPUs this driver lacks: computing them in a 1-GPU task")
    try:
        part = ray.get(task.remote(spec.model_dump_json(), teacher.path.read_bytes(), teacher.meta,
                                   data, needs, device_type), timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - a speed-up: the sweep goes on with the live teacher
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        log(f"teacher outputs: the GPU task failed ({why}): live teacher")
        return out
    _write(folder, part["arrays"], part["meta"])
    log(f"teacher outputs: {', '.join(needs)} for {part['meta']['rows']} training rows computed on "
        f"{part['meta']['device']}, cached at {folder}" + ("" if part["meta"]["exact"] else
        " (NOT equal to the live teacher on a shuffled batch: trials run it live)"))
    return {**out, "outputs": str(folder)}


def remote_build(spec_json: str, teacher_bytes: bytes, teacher_meta: dict[str, Any],
                 data: dict[str, Any] | None, needs: tuple[str, ...], device_type: str) -> dict[str, Any]:
    """Runs in the GPU task: the cache built in a scratch folder, returned as a bundle part."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the task got a GPU slot but torch sees no CUDA device")
    spec = Spec.model_validate_json(spec_json)
    with tempfile.TemporaryDirectory(prefix="kdtune-gpu-cache-") as tmp:
        base = Path(tmp)
        (base / "teacher.pt").write_bytes(teacher_bytes)
        teacher = TeacherArtifact(base / "teacher.pt", teacher_meta)
        shared = localize({"data": None}, {"data": data}, base=base) if data else None
        splits = trial_data(spec, shared)  # the driver's view, or loaded when none came
        local = spec.model_copy(update={"storage": str(base / "store")})  # cache_dir → scratch
        folder = build_teacher_outputs(local, teacher, splits, needs, torch.device(device_type),
                                       log=lambda m: None)
        return read_bundle({"outputs": str(folder)})["outputs"]
