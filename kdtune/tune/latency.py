"""``latency_ms`` of every full-length trial, measured on the driver after the sweep.

Trials share cores while a sweep runs, so a latency taken inside a trial says more about its
neighbours than about the model. After the sweep the driver loads each finished trial's last
checkpoint and times it alone (``kdtune.training.cost.latency_ms``: median of batch-1
forwards on one CPU thread), then logs it to the trial's MLflow run. A relative figure for
ranking students on one machine (docs/multi-objective.md), not a deployment number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kdtune.redact import redact
from kdtune.spec.paths import CHECKPOINT, tracking_uri
from kdtune.tracking.client import client
from kdtune.tracking.query import _children, find_sweep
from kdtune.tracking.schema import TRIAL_ID_TAG
from kdtune.training.checkpoint import load_student
from kdtune.training.cost import latency_ms

Log = Callable[[str], None]


def last_checkpoint(trial_path: str) -> Path | None:
    """The newest ``checkpoint_*/checkpoint.pt`` in a local trial folder."""
    found = sorted(Path(trial_path).glob(f"checkpoint_*/{CHECKPOINT}"))
    return found[-1] if found else None


def measure(result, log: Log = print) -> dict[str, float]:
    """Time every completed trial of a ``SweepResult`` and log ``latency_ms`` to its run;
    returns {trial name: ms}. Never raises: a sweep that ran is not failed by its bookkeeping
    (an MLflow outage, a checkpoint gone); one line says what is missing."""
    try:
        return _measure(result, log)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        log(f"latency_ms not measured ({type(e).__name__}: {redact(first)})")
        return {}


def _measure(result, log: Log) -> dict[str, float]:
    spec = result.spec
    c = client(tracking_uri(spec))
    runs = {r.data.tags.get(TRIAL_ID_TAG): r for r in _children(c, find_sweep(c, spec.name))}
    out: dict[str, float] = {}
    for t in result.trials:
        ckpt = last_checkpoint(t.path) if t.status == "completed" else None
        if ckpt is None:
            continue
        model = load_student(ckpt, "cpu")
        shape = model.spec
        out[t.name] = ms = latency_ms(model, int(shape["in_channels"]), int(shape["input_size"]))
        run = runs.get(Path(t.path).name.rsplit("_", 1)[-1])
        if run is not None:
            c.log_metric(run.info.run_id, "latency_ms", ms)
    if out:
        log(f"latency_ms (batch 1, one CPU thread, measured after the sweep): {len(out)} trials, "
            f"{min(out.values()):.3g}-{max(out.values()):.3g} ms")
    return out
