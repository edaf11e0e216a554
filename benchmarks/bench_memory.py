"""Memory of concurrent trials: one shared, memory-mapped data view vs a copy per trial.

Each trial is a child process (as a Ray worker is) that builds its context the way a sweep's
trial does (``make_context``), reads every training, validation and test image once (an epoch's
worth of page faults), then trains 20 steps of ``cnn_small`` (model, optimiser, activations),
gives freed heap memory back (``malloc_trim``), and waits while its memory is read (psutil):

- shared: ``shared=`` the driver's data view (``kdtune.training.cache.prepare_shared``), memory-mapped;
- loaded: no shared view, each trial loads the dataset itself (``load_data``), as before.

Figures: a trial's private memory (USS) with a small and a 5× larger training set (two trials
running, so pages they share are not private to either), and the node's total over 1, 2 and 4
concurrent trials on the larger set (Σ PSS: each shared page counted once, split among its
mappers). ``anon`` (RssAnon) is memory no other process could share, whatever maps it.
Two-trial figures are medians over ``--reps`` runs (each trial a sample); 1 and 4 trials: one
run (they take the longest). Allocator noise is a few MB either way.

    python benchmarks/bench_memory.py [--quick] [--small 10000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Timer, dataset, emit, machine, median, quiet_stdout

MB = 1 << 20


def child(spec_json: str, shared_json: str) -> None:
    import torch

    from kdtune.spec import Spec
    from kdtune.training.engine import build_student
    from kdtune.training.ops import default_step, evaluate, make_optimizer
    from kdtune.methods import Batch
    from kdtune.params.walk import resolve_params
    from kdtune.training.trial import make_context

    torch.set_num_threads(1)
    spec = Spec.model_validate_json(spec_json)
    shared = json.loads(shared_json) or None
    ctx, method = make_context(spec, resolve_params(spec), None, seed=0, shared=shared)
    for _ in ctx.train_loader:  # every training image read once
        pass
    ctx.student = build_student(ctx, method).to(memory_format=torch.channels_last)
    evaluate(ctx.student, ctx.loader("val"), ctx.device)
    evaluate(ctx.student, ctx.loader("test"), ctx.device)
    ctx.optimizers = [make_optimizer(ctx.student.parameters(), ctx.common)]
    for _, (x, y, idx) in zip(range(20), ctx.train_loader):
        default_step(ctx, method, Batch(x, y, idx))
    # Give freed heap back first: glibc keeps what evaluation's temporaries freed (more batches
    # with more images), which would be counted as memory the trial holds.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print("READY", flush=True)
    sys.stdin.read()  # until the parent has measured


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_trials(k: int, spec, shared) -> list[dict]:
    """Start k trial processes, measure each once all are ready, stop them."""
    import psutil

    args = [sys.executable, __file__, "--child", spec.model_dump_json(), json.dumps(shared)]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(k)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"trial process failed (exit {p.wait()})")
        out = []
        for p in procs:
            m = psutil.Process(p.pid).memory_full_info()
            out.append({"uss": m.uss / MB, "pss": m.pss / MB, "rss": m.rss / MB,
                        "anon": status_kb(p.pid, "RssAnon") / 1024})
        return out
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: digits, 1 and 2 trials")
    ap.add_argument("--small", type=int, default=10000, help="training images of the small set (×5: large)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the 2-trial measurements")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    quiet_stdout()
    if a.quick:
        a.small, a.reps = 200, 1
    counts = [1, 2] if a.quick else [1, 2, 4]

    from kdtune.spec import parse_spec
    from kdtune.training.cache import prepare_shared

    tmp = Path(tempfile.mkdtemp(prefix="kdtune-bench-mem-"))
    name = dataset(a.quick)
    sizes = {"small": a.small, "large": 5 * a.small}
    specs = {s: parse_spec({"name": f"mem-{s}", "storage": str(tmp), "method": "scratch",
                            "data": {"name": name, "train_limit": n, "val_fraction": 0.1},
                            "student": {"model": "cnn_small"}, "params": {"batch_size": 128}})
             for s, n in sizes.items()}
    refs = {s: prepare_shared(spec, None, log=lambda m: None) for s, spec in specs.items()}

    def trials(mode: str, size: str, k: int) -> list[list[dict]]:
        return [run_trials(k, specs[size], refs[size] if mode == "shared" else None)
                for _ in range(a.reps)]

    with Timer() as t:
        uss, anon, node = {}, {}, {}
        for mode in ("shared", "loaded"):
            uss[mode], anon[mode], node[mode] = {}, {}, {}
            runs = {("small", 2): trials(mode, "small", 2), ("large", 2): trials(mode, "large", 2)}
            runs.update({("large", k): [run_trials(k, specs["large"], refs["large"] if mode == "shared"
                                                   else None)] for k in counts if k != 2})
            for size in sizes:  # two at once: the pages they share are private to neither
                rows = [r for rep in runs[(size, 2)] for r in rep]
                uss[mode][size] = round(median([r["uss"] for r in rows]), 1)
                anon[mode][size] = round(median([r["anon"] for r in rows]), 1)
            for k in counts:
                node[mode][k] = round(median([sum(r["pss"] for r in rep) for rep in runs[("large", k)]]), 1)
    data_mb = {s: round((Path(refs[s]["data"]) / "train_x.npy").stat().st_size / MB, 1) for s in sizes}
    emit({"benchmark": "memory", "dataset": name, "train_images": sizes, "train_x_mb": data_mb,
          "trial_uss_mb": uss, "trial_uss_growth_mb": {m: round(v["large"] - v["small"], 1)
                                                       for m, v in uss.items()},
          "trial_anon_mb": anon, "node_pss_mb_large": node,
          "node_growth_per_trial_mb": {m: round((v[counts[-1]] - v[1]) / (counts[-1] - 1), 1)
                                       for m, v in node.items()},
          "wall_s": round(t.s, 1), "machine": machine()})


if __name__ == "__main__":
    main()
