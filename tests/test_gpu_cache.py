"""GPU trials on a driver without a GPU: the teacher-output cache is built in a 1-GPU Ray task.

This machine has no GPU, so Ray is given one *logical* GPU: the task is scheduled as on a GPU
node. With ``device_type="cpu"`` the task computes on CPU and the whole path (object store in
and out, the driver writing the bundle, trials' files) is checked against the driver-built
cache bit for bit; with ``"cuda"`` the task finds no CUDA device and the sweep falls back to
the live teacher with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from kdtune.spec.load import parse_spec
from kdtune.training.cache import GPU_NEEDS_KEY, prepare_shared
from kdtune.training.teacher import ensure_teacher
from kdtune.tune.gpu_cache import build_on_gpu_node

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-driver path")


def spec_for(storage: Path, gpu: float):
    return parse_spec({"name": "gpucache", "data": {"name": "digits", "val_fraction": 0.2},
                       "teacher": {"model": "cnn4", "epochs": 1, "kwargs": {"width": 0.5}},
                       "student": {"model": "cnn_small", "classes": {"first": 5}, "kwargs": {"width": 0.5}},
                       "method": "kd", "epochs": 1, "resources": {"cpu": 1, "gpu": gpu},
                       "storage": str(storage)})


def arrays(folder: str) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(Path(folder).glob("*.npy"))}


@pytest.fixture
def fake_gpu_ray():
    if ray.is_initialized():  # an earlier in-process sweep's local Ray has no GPU
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_gpu_trials_get_a_cache_built_in_a_gpu_task(tmp_path, fake_gpu_ray):
    cpu_spec = spec_for(tmp_path / "cpu", gpu=0)
    teacher = ensure_teacher(cpu_spec, log=lambda m: None)
    on_driver = prepare_shared(cpu_spec, teacher, log=lambda m: None)
    assert on_driver["outputs"]  # CPU trials: the driver builds it itself

    spec = spec_for(tmp_path / "gpu", gpu=0.5)
    lines: list[str] = []
    shared = prepare_shared(spec, teacher, log=lines.append)
    assert shared["outputs"] is None and shared[GPU_NEEDS_KEY] == ["logits"]  # asks for a GPU task

    out = build_on_gpu_node(spec, teacher, shared, log=lines.append, device_type="cpu")
    assert GPU_NEEDS_KEY not in out and Path(out["outputs"]).parent.parent == tmp_path / "gpu" / "cache"
    meta = json.loads((Path(out["outputs"]) / "meta.json").read_text())
    assert meta["exact"] and meta["rows"] == json.loads((Path(on_driver["outputs"]) / "meta.json").read_text())["rows"]
    got, want = arrays(out["outputs"]), arrays(on_driver["outputs"])
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert any("computed on cpu, cached at" in m for m in lines), lines

    again = build_on_gpu_node(spec, teacher, shared, log=lines.append, device_type="cpu")
    assert again["outputs"] == out["outputs"]  # a resumed sweep reuses it: no second task


def test_the_gpu_task_failing_leaves_the_live_teacher_with_one_line(tmp_path, fake_gpu_ray):
    spec = spec_for(tmp_path, gpu=0.5)
    teacher = ensure_teacher(spec, log=lambda m: None)
    shared = prepare_shared(spec, teacher, log=lambda m: None)
    lines: list[str] = []
    out = build_on_gpu_node(spec, teacher, shared, log=lines.append)  # cuda: this host has none
    assert out["outputs"] is None and GPU_NEEDS_KEY not in out
    assert lines[-1].startswith("teacher outputs: the GPU task failed (") and "no CUDA device" in lines[-1]
    assert lines[-1].endswith(": live teacher")
