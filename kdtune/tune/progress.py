"""What a running sweep shows: a live panel on a terminal, plain status lines elsewhere.

``Progress`` is a Ray Tune callback in the driver. On a terminal (stdout is a TTY) it keeps one
rich ``Live`` panel up to date: trials pending / running / finished / stopped early / failed,
the running trials with their epoch and metric, epochs done of the budget, the best trial so
far with its parameters, the elapsed time and an ETA. Without a TTY (CI, ``ray job`` logs,
piped output) it prints one plain status line every ``KDTUNE_PROGRESS_S`` seconds (default 30).
Either way every finished or failed trial gets one line, in a fixed wording other tools grep::

      kd_002  val_acc 0.2500 · done · lr=0.0081 ...
      kd_001  val_acc 0.0667 · stopped at epoch 1 (ASHA) · lr=0.05 ...
      kd_003  ERROR, see <trial folder>/error.txt · lr=0.0069 ...
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from ray.tune import Callback
from ray.tune.experiment import Trial

EVERY_ENV = "KDTUNE_PROGRESS_S"
DEFAULT_EVERY = 30.0
REFRESH_S = 0.5  # the live panel's redraws at most this often: the controller steps every 0.1 s
MAX_ROWS = 12    # running trials listed in the panel; the rest are summed up in one row


def status_every(default: float = DEFAULT_EVERY) -> float:
    """Seconds between plain status lines: ``KDTUNE_PROGRESS_S`` if set (tests use 1), else 30."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        return default


@dataclass
class Counts:
    """Where a sweep stands: trial states and epochs against the budget."""

    pending: int
    running: int
    finished: int
    stopped: int      # ended by the scheduler (ASHA) before the last epoch
    failed: int
    trained: int      # epochs trained so far, all trials
    skipped: int      # epochs that will never run: the rest of early-stopped and failed trials
    budget: int       # num_samples × epochs

    @property
    def done(self) -> int:
        return min(self.budget, self.trained + self.skipped)


class Progress(Callback):
    """The sweep's progress: a live panel on a TTY, else a status line every ``every`` seconds,
    and one line per finished or failed trial.

    Epochs: the budget is ``num_samples × max_t``. A trial's epochs count as it trains them
    (stage reports, keys ``stage/...`` without ``epoch``, are not epochs). A trial that ASHA
    stops early, or that fails, counts its remaining epochs as *skipped*: they will never run,
    so done = trained + skipped reaches the budget when the sweep ends. The ETA is the epochs
    still to do at the rate epochs were trained since this driver started (on ``--resume`` too);
    later early stops make the real end come sooner.
    """

    def __init__(self, metric: str, mode: str, max_t: int, every: float | None = None,
                 num_samples: int | None = None, live: bool | None = None) -> None:
        self.metric, self.mode, self.max_t = metric, mode, max_t
        self.every = status_every() if every is None else every
        self.num_samples = num_samples
        self.live = live                    # None: a panel only when stdout is a TTY
        self._start = self._last = time.monotonic()
        self._drawn = 0.0
        self._trained = 0                   # epochs reported since this driver started
        self._epoch: dict[str, int] = {}    # trial id -> its last main epoch
        self._main: dict[str, dict] = {}    # trial id -> its last main-epoch result
        self._stage: dict[str, str] = {}    # trial id -> "stage <name> epoch k" while in one
        self._panel: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune may pickle its callbacks with the experiment; a live display is this process's
        state = self.__dict__.copy()
        state["_panel"] = None
        return state

    # ------------------------------------------------------------------ Tune hooks
    def setup(self, **info) -> None:
        self._start = self._last = time.monotonic()
        live = self.live if self.live is not None else sys.stdout.isatty()
        if live and self._panel is None:
            self._panel = Live(Text(""), console=Console(), auto_refresh=False,
                               redirect_stdout=True, redirect_stderr=True)
            self._panel.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._draw(trials, force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        epoch = result.get("epoch")
        if isinstance(epoch, (int, float)):
            self._trained += 1  # one report per epoch (a restored trial repeats none it saved)
            self._epoch[trial.trial_id] = int(epoch)
            self._main[trial.trial_id] = dict(result)
            self._stage.pop(trial.trial_id, None)
        else:
            stages = sorted({k.split("/")[1] for k in result if k.startswith("stage/") and
                             k.count("/") >= 2})
            if stages:
                k = result.get(f"stage/{stages[0]}/epoch")
                self._stage[trial.trial_id] = f"stage {stages[0]}" + (f" epoch {k}" if k else "")
        self._draw(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = self._result(trial)
        e = self._epoch_of(trial)
        how = "done" if e >= self.max_t else f"stopped at epoch {e} (ASHA)"
        self._line(trial, f"{self.metric} {_num(r.get(self.metric))} · {how}")
        self._stage.pop(trial.trial_id, None)
        self._draw(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"ERROR, see {trial.path}/error.txt")
        self._stage.pop(trial.trial_id, None)
        self._draw(trials, force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._draw(trials)
        if self._panel is None and time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            print("  " + self.status_line(trials), flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        if self._panel is not None:
            self._draw(trials, force=True)
            self._panel.stop()
            self._panel = None

    # ------------------------------------------------------------------ what is shown
    def counts(self, trials: Sequence[Any]) -> Counts:
        """Trial states and epochs now (trials the searcher has not made yet are pending)."""
        n = {"pending": 0, "running": 0, "finished": 0, "stopped": 0, "failed": 0}
        trained = skipped = 0
        for t in trials:
            e = self._epoch_of(t)
            trained += e
            if t.status == Trial.RUNNING:
                n["running"] += 1
            elif t.status == Trial.TERMINATED:
                n["finished" if e >= self.max_t else "stopped"] += 1
                skipped += max(0, self.max_t - e)
            elif t.status == Trial.ERROR:
                n["failed"] += 1
                skipped += max(0, self.max_t - e)
            else:  # PENDING, PAUSED
                n["pending"] += 1
        total = max(self.num_samples or 0, len(trials))
        n["pending"] += total - len(trials)
        return Counts(**n, trained=trained, skipped=skipped, budget=total * self.max_t)

    def eta_s(self, c: Counts) -> float | None:
        """Seconds left at the rate epochs were trained so far; None before the first epoch."""
        if c.done >= c.budget and c.budget:
            return 0.0
        if self._trained <= 0:
            return None
        return (c.budget - c.done) * (time.monotonic() - self._start) / self._trained

    def best(self, trials: Sequence[Any]) -> Any | None:
        """The trial with the best metric at its last epoch so far (None: none reported one)."""
        scored = [t for t in trials if _finite(self._result(t).get(self.metric))]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: self._result(t)[self.metric])

    def status_line(self, trials: Sequence[Any]) -> str:
        """The plain one-line status: states, epochs, best so far, elapsed and ETA."""
        c = self.counts(trials)
        parts = [f"status: {_states(c)}", _epochs(c), self._times(c)]
        b = self.best(trials)
        if b is not None:
            parts.insert(2, f"best {_name(b)} {self.metric} {_num(self._result(b)[self.metric])} "
                            f"(epoch {self._epoch_of(b)})")
        return " · ".join(parts)

    def render(self, trials: Sequence[Any]) -> Panel:
        """The live panel."""
        c = self.counts(trials)
        body: list[Any] = [Text(f"trials: {_states(c)}"), Text(_epochs(c))]
        running = [t for t in trials if t.status == Trial.RUNNING]
        if running:
            table = Table("running", "epoch", self.metric, "parameters", box=None, pad_edge=False)
            for t in running[:MAX_ROWS]:
                where = self._stage.get(t.trial_id) or f"{self._epoch_of(t)}/{self.max_t}"
                table.add_row(_name(t), where, _num(self._result(t).get(self.metric)), _params(t))
            if len(running) > MAX_ROWS:
                table.add_row(f"… {len(running) - MAX_ROWS} more", "", "", "")
            body.append(table)
        b = self.best(trials)
        if b is not None:
            body.append(Text(f"best so far: {_name(b)} {self.metric} "
                             f"{_num(self._result(b)[self.metric])} (epoch {self._epoch_of(b)}) · "
                             f"{_params(b)}"))
        body.append(Text(self._times(c)))
        return Panel(Group(*body), title="sweep", expand=False)

    # ------------------------------------------------------------------ helpers
    def _draw(self, trials: Sequence[Any], force: bool = False) -> None:
        if self._panel is None:
            return
        now = time.monotonic()
        if force or now - self._drawn >= REFRESH_S:
            self._drawn = now
            self._panel.update(self.render(trials), refresh=True)

    def _times(self, c: Counts) -> str:
        eta = self.eta_s(c)
        return f"elapsed {_clock(time.monotonic() - self._start)} · ETA " + \
            ("?" if eta is None else _clock(eta))

    def _result(self, trial: Any) -> dict:
        """The trial's last main-epoch result (a stage report after it does not replace it)."""
        r = self._main.get(trial.trial_id)
        if r is None:
            r = trial.last_result or {}
        return r

    def _epoch_of(self, trial: Any) -> int:
        e = (trial.last_result or {}).get("epoch")
        return max(self._epoch.get(trial.trial_id, 0), int(e) if isinstance(e, (int, float)) else 0)

    def _line(self, trial: Any, what: str) -> None:
        line = f"  {_name(trial)}  {what} · {_params(trial)}"
        if self._panel is not None:  # above the panel, which stays at the bottom
            self._panel.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, flush=True)


def _name(trial: Any) -> str:
    """``kd_003`` (Tune's trial name, kdtune's ``trial_name_creator``); a stand-in's trial id."""
    return str(trial) if isinstance(trial, Trial) else str(trial.trial_id)


def _params(trial: Any) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items())


def _states(c: Counts) -> str:
    return (f"{c.pending} pending, {c.running} running, {c.finished} finished, "
            f"{c.stopped} stopped early, {c.failed} failed")


def _epochs(c: Counts) -> str:
    pct = 100 * c.done / c.budget if c.budget else 0
    skipped = f", {c.skipped} skipped by early stops/failures" if c.skipped else ""
    return f"epochs {c.done}/{c.budget} ({pct:.0f}%: {c.trained} trained{skipped})"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
