"""A failed trial's error, as Tune recorded it: the whole text, and its last line."""

from __future__ import annotations

from pathlib import Path

from kdtune.tune._ray_compat import trial_error_path


def error_text(trial) -> str | None:
    """The trial's error file: the driver's staging copy (written before ``on_trial_error``),
    else the copy in Tune storage."""
    path = trial_error_path(trial)
    if path:
        try:
            return Path(path).read_text()
        except OSError:
            pass
    try:
        return trial.get_error()
    except Exception:  # noqa: BLE001 - storage may be unreachable
        return None


def error_reason(trial) -> str:
    """The error's last line (``NonFiniteLoss: loss is nan at epoch 2``), for the run's tag."""
    lines = [ln.strip() for ln in str(error_text(trial) or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed (no error text)")[:5000]
