"""kdtune's trial loop vs a plain PyTorch loop: training samples per second, side by side.

Both train the same model (``cnn_small``, built by ``create_model``) on the same images
(a Fashion-MNIST subset) with the same batch (128), optimiser (SGD, Nesterov 0.9, wd 5e-4,
cosine) and one thread (a trial's ``cpu: 1``), and both evaluate a small val and test split
after each epoch / at the end, so each side's time is a whole short run:

- kdtune: ``engine.train`` with ``scratch`` (uint8 tensors in memory, batches by index,
  normalisation as one tensor op, channels_last), and again with ``compile: true``
  (its compile time counted);
- plain: a ``Dataset`` of PIL images with torchvision ``ToTensor + Normalize`` and a
  ``DataLoader`` (``num_workers=0``: the trial has one CPU), the model in PyTorch's default
  layout — the usual tutorial loop.

Prints one JSON line: samples/s of each (medians of interleaved repetitions) and the median
of the per-repetition ratios, of CPU seconds (``ratio``: one thread, so the work itself, whatever
else the shared machine runs) and of wall seconds (``ratio_wall``).

    python benchmarks/bench_engine.py [--quick] [--reps 3] [--train 6000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

from _common import Timer, dataset, emit, machine, median, quiet_stdout


def make_data(name: str, n_train: int, n_small: int):
    from kdtune.data import TensorData, load_data

    d = load_data(name, train_limit=n_train + n_small, val_fraction=n_small / (n_train + n_small))
    d.test = TensorData(d.test.x[:n_small], d.test.y[:n_small], d.test.rows[:n_small])
    return d


def run_kdtune(data, epochs: int, compile_: bool) -> tuple[Timer, list[float]]:
    """The timer of ``engine.train``, and the wall time of each epoch (train + val)."""
    import torch

    from kdtune.spec import parse_spec
    from kdtune.training.context import TrialContext
    from kdtune.training.engine import train
    from kdtune.methods import make_method
    from kdtune.params.walk import CommonParams

    spec = parse_spec({"student": {"model": "cnn_small"}, "method": "scratch", "compile": compile_})
    ctx = TrialContext(spec=spec, common=CommonParams(batch_size=128, lr=0.05), data=data,
                       device=torch.device("cpu"), seed=0)
    marks = [time.perf_counter()]
    with Timer() as t:
        train(ctx, make_method("scratch", {}), lambda *a, **k: marks.append(time.perf_counter()),
              epochs=epochs)
    return t, [b - a for a, b in zip(marks, marks[1:])]


def run_plain(data, epochs: int) -> Timer:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from kdtune.models import create_model

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])

    class Images(Dataset):  # as torchvision's MNIST-style datasets: PIL image → transform
        def __init__(self, split):
            self.x = split.x[:, 0].numpy() if split.x.shape[1] == 1 else split.x.permute(0, 2, 3, 1).numpy()
            self.y = split.y.tolist()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return tf(Image.fromarray(np.ascontiguousarray(self.x[i]))), self.y[i]

    with Timer() as t:
        torch.manual_seed(0)
        model = create_model("cnn_small", data.num_classes, data.in_channels, data.input_size)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        train_dl = DataLoader(Images(data.train), batch_size=128, shuffle=True, num_workers=0)

        def evaluate(split):
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in DataLoader(Images(split), batch_size=512, num_workers=0):
                    correct += int((model(x).argmax(1) == y).sum())
            model.train()
            return correct / len(split)

        for _ in range(epochs):
            model.train()
            for x, y in train_dl:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            evaluate(data.val)
        evaluate(data.test)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests): digits, 1 rep, no compile")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train", type=int, default=6000, help="training images")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    a = ap.parse_args()
    quiet_stdout()
    if a.quick:
        a.reps, a.train, a.epochs, a.no_compile = 1, 400, 1, True

    import torch

    torch.set_num_threads(1)  # a trial's cpu: 1
    name = dataset(a.quick)
    data = make_data(name, a.train, max(64, a.train // 50))
    n = len(data.train) * a.epochs
    contenders = ["kdtune", "plain"] + ([] if a.no_compile else ["compiled"])
    runs: dict[str, list[Timer]] = {c: [] for c in contenders}
    later_epoch: dict[str, list[float]] = {"kdtune": [], "compiled": []}  # epochs after the first
    compile_s: list[float] = []
    for r in range(a.reps):
        order = contenders if r % 2 == 0 else contenders[::-1]  # interleaved: load hits all alike
        for c in order:
            if c == "plain":
                runs[c].append(run_plain(data, a.epochs))
                continue
            t, epochs = run_kdtune(data, a.epochs, compile_=c == "compiled")
            runs[c].append(t)
            if len(epochs) > 1:
                later_epoch[c].append(median(epochs[1:]))
                if c == "compiled":  # the first epoch pays the compilation
                    compile_s.append(epochs[0] - median(epochs[1:]))
    rate = {c: n / median([t.s for t in v]) for c, v in runs.items()}
    cpu_rate = {c: n / median([t.cpu for t in v]) for c, v in runs.items()}

    def ratio(c: str, attr: str) -> float:  # median over repetitions of plain time / c's time
        return round(median([getattr(p, attr) / getattr(k, attr) for k, p in zip(runs[c], runs["plain"])]), 3)

    out = {
        "benchmark": "engine", "dataset": name, "train_images": len(data.train),
        "epochs": a.epochs, "batch": 128, "threads": 1, "reps": a.reps,
        "kdtune_samples_per_s": round(rate["kdtune"], 1),
        "plain_samples_per_s": round(rate["plain"], 1),
        "kdtune_samples_per_cpu_s": round(cpu_rate["kdtune"], 1),
        "plain_samples_per_cpu_s": round(cpu_rate["plain"], 1),
        "ratio": ratio("kdtune", "cpu"), "ratio_wall": ratio("kdtune", "s"),
    }
    if "compiled" in runs:
        out["compiled_samples_per_s"] = round(rate["compiled"], 1)
        out["compiled_ratio"] = ratio("compiled", "cpu")
        out["compiled_ratio_wall"] = ratio("compiled", "s")
        if compile_s:
            # the first repetition compiles with a cold inductor cache, later ones reuse it (as
            # later trials on a node do)
            out["compile_s_first"] = round(compile_s[0], 1)
            out["compile_s_median"] = round(median(compile_s), 1)
            # after compiling: an epoch's time, eager over compiled (> 1: compiled is faster)
            out["compiled_steady_speedup"] = round(median(later_epoch["kdtune"]) / median(later_epoch["compiled"]), 3)
    out["machine"] = machine()
    emit(out)


if __name__ == "__main__":
    main()
