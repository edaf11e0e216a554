"""kdtune against the same sweep written directly on Ray Tune's public API, side by side.

The setting is ``bench_search``'s (``_common.G2S``: Fashion-MNIST, cnn4 teacher on 10 classes,
cnn_small width 0.25 on the first 5, 1,500 train / 2,000 val images, 8 epochs, method kd).
For each seed, in alternating order, in one process and one local Ray:

- **kdtune**: ``kdtune.sweep(spec)``, as a user calls it (its defaults: TPE + ASHA, the
  teacher-output cache, MLflow tracking to its sqlite store);
- **baseline**: the sweep as Ray Tune's docs examples would have a user write it: a function
  trainable over a torchvision ``FashionMNIST`` + ``Subset`` + ``DataLoader`` (the same image
  rows), the teacher loaded from the same checkpoint and run live on every batch, Hinton's
  loss as ``kdtune/methods/kd.py`` computes it (α·CE + (1 − α)·T²·KL, teacher-logit dropout),
  SGD (Nesterov) or AdamW with a cosine schedule, a checkpoint and ``tune.report`` per epoch,
  ``OptunaSearch`` with its default TPE (seeded, no start points), ``ASHAScheduler`` with
  kdtune's grace period and reduction factor, ``MLflowLoggerCallback`` to a sqlite store,
  1 CPU and ``torch.set_num_threads(1)`` per trial, as many trials at once as kdtune runs.

Both search the same parameters over the same ranges (read from ``search_spaces/_common.yaml``
and ``kd.yaml``), build the student with ``kdtune.models.create_model``, and run
``--trials`` trials. The teacher is trained once beforehand; Ray starts once beforehand.

Figures (medians over seeds): the wall-time ratio baseline / kdtune at equal trials; each one's
best ``val_acc`` (a trial's value at its last epoch) at equal trials; and at equal wall time:
the slower one's best among the trials it had finished within the faster one's wall time
(``equal_wall.slower`` names which that was), against the faster one's final best.

    python benchmarks/bench_vs_tune.py [--quick] [--seeds 5 6 7] [--trials 24]

Needs a quiet machine: wall-time ratios measured while other jobs run are not valid.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import (G2S, OUT, ROOT, emit, fmnist_available, g2s_spec, g2s_teacher, machine, median,
                     quiet_stdout)


def log(msg: str) -> None:
    print(f"[bench_vs_tune {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tune_space() -> dict:
    """kdtune's kd search space (the YAML files) written as a Tune ``param_space``."""
    import yaml
    from ray import tune

    space = {}
    for f in ("_common.yaml", "kd.yaml"):
        for name, p in yaml.safe_load((ROOT / "search_spaces" / f).read_text())["params"].items():
            kind = p.get("type")
            if kind == "categorical":
                space[name] = tune.choice(p["choices"])
            elif kind == "float":
                space[name] = (tune.loguniform if p.get("log") else tune.uniform)(p["low"], p["high"])
            elif kind == "int":
                space[name] = (tune.lograndint if p.get("log") else tune.randint)(p["low"], p["high"] + 1)
    return space


def plain_trial(config, root, rows, classes, teacher_path, width, epochs, mean, std):
    """The baseline's trainable: what a user writes from Tune's PyTorch examples."""
    import torch
    import torch.nn.functional as F
    from ray import tune
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from kdtune.models import create_model
    from kdtune.training.checkpoint import load_student

    torch.set_num_threads(1)
    tfm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_set = datasets.FashionMNIST(root, train=True, transform=tfm)
    test_set = datasets.FashionMNIST(root, train=False, transform=tfm)
    train_loader = DataLoader(Subset(train_set, rows["train"]), batch_size=int(config["batch_size"]),
                              shuffle=True)
    val_loader = DataLoader(Subset(train_set, rows["val"]), batch_size=512)
    test_loader = DataLoader(Subset(test_set, rows["test"]), batch_size=512)

    teacher = load_student(teacher_path).eval()
    cols = torch.tensor(classes)  # G→S: the teacher's logits of the student's classes
    student = create_model("cnn_small", len(classes), 1, 28, width=width)
    if config["optimizer"] == "sgd":
        opt = torch.optim.SGD(student.parameters(), lr=config["lr"], momentum=0.9, nesterov=True,
                              weight_decay=config["weight_decay"])
    else:
        opt = torch.optim.AdamW(student.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    T, alpha, p = config["temperature"], config["alpha"], config["teacher_dropout"]

    def evaluate(loader):
        student.eval()
        correct, loss, n = 0, 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                out = student(x)
                loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                n += len(y)
        return correct / n, loss / n

    for epoch in range(epochs):
        student.train()
        for x, y in train_loader:  # labels 0..k-1: the first k classes keep their ids
            with torch.no_grad():
                t = teacher(x).index_select(1, cols)
            t = F.dropout(t, p, training=True)
            s = student(x)
            soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                            log_target=True) * T * T
            loss = alpha * F.cross_entropy(s, y) + (1 - alpha) * soft
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        val_acc, val_loss = evaluate(val_loader)
        metrics = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
        if epoch == epochs - 1:
            metrics["test_acc"], metrics["test_loss"] = evaluate(test_loader)
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                       os.path.join(d, "checkpoint.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_baseline(spec, teacher, root: Path, rows: dict, classes: list[int], mean: float, std: float,
                 slots: int, work: Path, seed: int):
    """The plain Ray Tune sweep; returns its ResultGrid."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from kdtune.tune.schedule import grace_period

    trainable = tune.with_parameters(plain_trial, root=str(root), rows=rows, classes=classes,
                                     teacher_path=str(teacher.path), width=spec.student.kwargs["width"],
                                     epochs=spec.epochs, mean=mean, std=std)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=tune_space(),
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=spec.search.num_samples,
            search_alg=ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=slots),
            scheduler=ASHAScheduler(max_t=spec.epochs, grace_period=grace_period(spec),
                                    reduction_factor=spec.scheduler.reduction_factor)),
        run_config=tune.RunConfig(
            name=f"plain-{seed}", storage_path=str(work / "tune"), verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{work}/mlflow.db",
                                            experiment_name=f"plain-{seed}")]))
    return tuner.fit()


def finished(grid, t0: float) -> list[tuple[float, float]]:
    """(seconds after t0 when the trial reported its last epoch, its val_acc there), per trial
    with a result; Tune's ``timestamp`` has 1 s resolution."""
    out = []
    for r in grid:
        m = r.metrics or {}
        if isinstance(m.get("val_acc"), (int, float)) and "timestamp" in m:
            out.append((float(m["timestamp"]) - t0, float(m["val_acc"])))
    return out


def best_within(rows: list[tuple[float, float]], seconds: float) -> tuple[float | None, int]:
    """(best val_acc among trials finished within ``seconds``, how many had)."""
    done = [v for t, v in rows if t <= seconds]
    return (max(done) if done else None), len(done)


def torchvision_root(work: Path) -> Path:
    """Debian's Fashion-MNIST .gz files unpacked where torchvision's ``FashionMNIST`` looks."""
    from kdtune.data.datasets import DEBIAN_FASHION_MNIST, _IDX

    raw = work / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in _IDX:
        with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz") as src, open(raw / f, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return work / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 4 trials × 2 epochs, "
                    "700 images")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7])
    ap.add_argument("--trials", type=int, default=24, help="trials per sweep (each tool)")
    a = ap.parse_args()
    quiet_stdout()
    if not fmnist_available():
        emit({"benchmark": "vs_tune", "skipped": "Fashion-MNIST (Debian's files) not installed"})
        return
    setting = dict(G2S)
    if a.quick:
        a.seeds, a.trials = a.seeds[:1], 4
        setting.update(train_limit=700, val=300, epochs=2, teacher_epochs=1)

    import ray

    import kdtune
    from kdtune.data import load_data
    from kdtune.tune.run import init_ray

    work = Path(tempfile.mkdtemp(prefix="kdtune-bench-vs-tune-"))
    store = OUT / ("vs-tune-store-quick" if a.quick else "vs-tune-store")  # the teacher, kept
    base = g2s_spec("bench-vs-tune", store, "fashion-mnist", setting)
    teacher, facts = g2s_teacher(base, log=log)
    d = base.data
    data = load_data(d.name, train_limit=d.train_limit, val_fraction=d.val_fraction,
                     classes=base.student.classes, seed=d.split_seed)
    assert list(data.classes) == list(range(len(data.classes))), "labels must keep their ids"
    rows = {s: getattr(data, s).rows.tolist() for s in ("train", "val", "test")}
    root = torchvision_root(work)
    init_ray(log=log)
    slots = int(ray.cluster_resources().get("CPU", 1))
    log(f"setting {setting}; {facts}; {a.trials} trials per sweep, {slots} at once")

    per_seed = []
    for i, seed in enumerate(a.seeds):
        spec = g2s_spec(f"vs-tune-{seed}", work / f"kdtune-{seed}", "fashion-mnist", setting,
                        teacher=str(teacher.path),
                        overrides=[f"search.seed={seed}", f"search.num_samples={a.trials}",
                                   f"tracking.uri=sqlite:///{work}/kdtune-{seed}/mlflow.db"])
        out = {}
        for tool in (("kdtune", "baseline") if i % 2 == 0 else ("baseline", "kdtune")):
            t0 = time.time()
            if tool == "kdtune":
                res = kdtune.sweep(spec, log=lambda s: None)
                grid, best = res.grid, res.best.value if res.best else None
            else:
                grid = run_baseline(spec, teacher, root, rows, list(data.classes), data.mean[0],
                                    data.std[0], slots, work / f"plain-{seed}", seed)
                vals = [v for _, v in finished(grid, t0)]
                best = max(vals) if vals else None
            wall = time.time() - t0
            fin = finished(grid, t0)
            out[tool] = {"wall_s": round(wall, 1), "best": None if best is None else round(best, 4),
                         "trials": len(grid), "errors": len(grid.errors),
                         "epochs_run": sum(int((r.metrics or {}).get("epoch") or 0) for r in grid),
                         "_fin": fin}
            log(f"seed {seed} {tool}: {wall:.0f} s, best {best}, {len(grid.errors)} errors")
        k, b = out["kdtune"], out["baseline"]
        slower, faster = ("baseline", "kdtune") if b["wall_s"] >= k["wall_s"] else ("kdtune", "baseline")
        within, n = best_within(out[slower]["_fin"], out[faster]["wall_s"])
        per_seed.append({"seed": seed, "wall_ratio": round(b["wall_s"] / k["wall_s"], 3),
                         **{t: {x: v for x, v in out[t].items() if x != "_fin"} for t in out},
                         "equal_wall": {"at_s": out[faster]["wall_s"], "slower": slower,
                                        f"{faster}_best": out[faster]["best"],
                                        f"{slower}_best_within": None if within is None else round(within, 4),
                                        f"{slower}_trials_within": n}})
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    def med(f):
        xs = [f(s) for s in per_seed if f(s) is not None]
        return round(median(xs), 4) if xs else None

    def eq(s, tool):  # a tool's best at the faster one's wall time
        e = s["equal_wall"]
        return e.get(f"{tool}_best", e.get(f"{tool}_best_within"))

    emit({"benchmark": "vs_tune", "dataset": "fashion-mnist-5", "setting": setting, **facts,
          "trials": a.trials, "seeds": a.seeds, "slots": slots,
          "median_wall_ratio_baseline_over_kdtune": med(lambda s: s["wall_ratio"]),
          "median_best_equal_trials": {"kdtune": med(lambda s: s["kdtune"]["best"]),
                                       "baseline": med(lambda s: s["baseline"]["best"])},
          "median_best_equal_wall": {"kdtune": med(lambda s: eq(s, "kdtune")),
                                     "baseline": med(lambda s: eq(s, "baseline"))},
          "per_seed": per_seed, "machine": machine()})


if __name__ == "__main__":
    main()
