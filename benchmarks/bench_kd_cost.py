"""What the teacher costs a KD trial and an attention-transfer (``at``) trial: with the
teacher-output cache (logits for kd; the two teacher feature maps at reads), and with the live
teacher, each over a scratch trial of the same student, side by side.

Teacher ``cnn4`` (10 classes; its weights do not change the cost, so it is not trained here),
student ``cnn_small`` on a Fashion-MNIST subset, batch 128, one thread (a trial's ``cpu: 1``).
All three trials are ``kdtune.training.trial.run_trial`` on the same memory-mapped data view
(``kdtune.training.cache``); the cached one reads the teacher outputs the driver computed once (that
build is timed too, as ``cache_build_s``: paid once per sweep, not per trial). A trial here is
the whole run: context, epochs with validation, and the final test evaluation.

The ratios are of CPU seconds (one thread: the trial's work, whatever else the shared machine
runs); the same ratios of wall seconds are printed beside them (``..._wall``). Each is the
median over repetitions of the ratio within a repetition (the three trials run back to back,
in alternating order).

    python benchmarks/bench_kd_cost.py [--quick] [--reps 3] [--train 6000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import Timer, dataset, emit, machine, median, quiet_stdout


def fake_teacher(spec, folder: Path):
    """An untrained cnn4 saved as a kdtune checkpoint (the cost of a forward is all we need)."""
    import torch

    from kdtune.data import raw_data
    from kdtune.training.checkpoint import arch_of, save_state
    from kdtune.models import create_model
    from kdtune.training.teacher import TeacherArtifact

    raw = raw_data(spec.data.name)
    torch.manual_seed(0)
    model = create_model("cnn4", raw.num_classes, raw.train_x.shape[1], raw.train_x.shape[2])
    classes = list(range(raw.num_classes))
    path = save_state({"student": model.state_dict(), "arch": arch_of(model), "classes": classes,
                       "meta": {"classes": classes}}, folder / "teacher.pt")
    return TeacherArtifact(path, {"classes": classes, "key": "bench"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests): digits, 1 rep")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--train", type=int, default=6000, help="training images")
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    quiet_stdout()
    if a.quick:
        a.reps, a.train, a.epochs = 1, 400, 1

    import torch

    from kdtune.spec import parse_spec
    from kdtune.params.walk import resolve_params
    from kdtune.training.cache import prepare_shared
    from kdtune.training.trial import run_trial

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kdtune-bench-kd-"))
    name = dataset(a.quick)
    base = {"name": "bench-kd", "storage": str(tmp), "epochs": a.epochs,
            "data": {"name": name, "train_limit": a.train, "val_fraction": 0.05},
            "student": {"model": "cnn_small"}, "params": {"batch_size": 128}}
    specs = {m: parse_spec({**base, "method": m}) for m in ("scratch", "kd", "at")}
    teacher = fake_teacher(specs["kd"], tmp)
    with Timer() as build:
        ref = prepare_shared(specs["kd"], teacher, log=lambda s: None)
    with Timer() as at_build:
        at_ref = prepare_shared(specs["at"], teacher, log=lambda s: None)
    assert ref["outputs"] and at_ref["outputs"], "the cache was not built"
    live_ref = {"data": ref["data"], "outputs": None}  # same mapped data, no teacher cache

    def trial(kind: str) -> Timer:
        method = kind.removesuffix("_cached").removesuffix("_live")
        spec = specs["kd" if method in ("cached", "live") else method]
        shared = ({"cached": ref, "at_cached": at_ref}.get(kind, live_ref))
        with Timer() as t:
            run_trial(spec, resolve_params(spec), None if kind == "scratch" else teacher,
                      lambda *x, **k: None, seed=0, shared=shared)
        return t

    kinds = ["scratch", "cached", "live", "at_cached", "at_live"]
    runs: dict[str, list[Timer]] = {k: [] for k in kinds}
    for r in range(a.reps):
        for k in (kinds if r % 2 == 0 else kinds[::-1]):
            runs[k].append(trial(k))

    def ratio(k: str, attr: str) -> float:
        return round(median([getattr(t, attr) / getattr(s, attr) for t, s in zip(runs[k], runs["scratch"])]), 3)

    def med(k: str, attr: str) -> float:
        return round(median([getattr(t, attr) for t in runs[k]]), 2)
    emit({"benchmark": "kd_cost", "dataset": name, "train_images": a.train, "epochs": a.epochs,
          "teacher": "cnn4", "student": "cnn_small", "batch": 128, "threads": 1, "reps": a.reps,
          "kd_cached_over_scratch": ratio("cached", "cpu"),
          "kd_live_over_scratch": ratio("live", "cpu"),
          "kd_cached_over_scratch_wall": ratio("cached", "s"),
          "kd_live_over_scratch_wall": ratio("live", "s"),
          "at_cached_over_scratch": ratio("at_cached", "cpu"),
          "at_live_over_scratch": ratio("at_live", "cpu"),
          "at_live_over_cached": round(median([lv.cpu / c.cpu for lv, c in
                                               zip(runs["at_live"], runs["at_cached"])]), 3),
          "cpu_s": {k: med(k, "cpu") for k in kinds}, "wall_s": {k: med(k, "s") for k in kinds},
          "cache_build_s": round(build.s, 2), "at_cache_build_s": round(at_build.s, 2),
          "machine": machine()})


if __name__ == "__main__":
    main()
