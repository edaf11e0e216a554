"""``kdtune sweep …``: the sweep sub-app (registered into ``kdtune.cli.app`` as ``sweep``).

Its own module so sweep commands (``run`` here; ``list``, ``best``, ``promote`` … beside it)
never collide with edits to the rest of the CLI. Spec errors exit 2 before Ray starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer
from rich.table import Table

# Defined before importing kdtune.cli: that module registers this object at import time.
sweep_app = typer.Typer(help="Hyperparameter sweeps on Ray Tune (local, or a cluster via RAY_ADDRESS).",
                        no_args_is_help=True)

from kdtune.cli import SetOpt, console, guarded  # noqa: E402

TOP = 5


def tracking_callbacks(spec, resume: bool) -> list:
    """The MLflow logger's Tune callbacks, once ``kdtune.tune.callbacks`` exists."""
    if importlib.util.find_spec("kdtune.tune.callbacks") is None:
        return []
    from kdtune.tune.callbacks import sweep_callbacks

    return list(sweep_callbacks(spec, resume))


@sweep_app.command("run")
@guarded
def run(spec: Path = typer.Argument(..., help="Spec YAML (see examples/)."),
        set_: list[str] = SetOpt,
        resume: bool = typer.Option(False, "--resume", help="Continue the sweep of this name: "
                                    "finished trials stay, unfinished ones restart from their "
                                    "last checkpoint."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and search space; "
                                     "start nothing.")) -> None:
    """Search a spec's hyperparameters with Ray Tune; writes <storage>/<name>/best.yaml."""
    from rich.markup import escape

    from kdtune.config import load_spec
    from kdtune.redact import redact
    from kdtune.tune.run import plan_sweep, run_sweep

    s = load_spec(spec, set_)
    if dry_run:
        plan = plan_sweep(s)
        for line in plan.lines():
            console.print(escape(redact(line)), highlight=False)
        console.print(_space_table(plan))
        for p in plan.first:
            console.print(f"evaluated first (paper defaults): {_params(p)}", highlight=False)
        return
    callbacks = tracking_callbacks(s, resume)
    if callbacks:  # the tracking store answers (and takes writes) before Ray starts
        from kdtune.tracking import check_tracking

        check_tracking(s)
    result = run_sweep(s, resume=resume, callbacks=callbacks,
                       log=lambda m: console.print(escape(redact(m)), highlight=False))
    console.print(_top_table(result))
    for t in result.errors:
        console.print(f"[red]failed[/red] {t.name}: {escape(redact(t.error or ''))} ({t.path}/error.txt)",
                      highlight=False, soft_wrap=True)  # one line per trial (grep-able)
    if result.best is None:
        console.print(f"[red]no trial reported {s.metric}[/red]; see the errors above", highlight=False)
        raise typer.Exit(1)
    console.print(f"best: {result.best.name} {s.metric} {result.best.value:.4f} "
                  f"(epoch {result.best.epochs}/{s.epochs})", highlight=False)
    console.print(f"best.yaml: {result.best_yaml}", highlight=False)
    console.print(f"reproduce: kdtune train {result.best_yaml}", highlight=False)


def _params(config: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _space_table(plan) -> Table:
    table = Table("parameter", "range", "default", "when", title="search space")
    for r in plan.rows:
        p = r.space
        if r.fixed:
            rng = f"fixed {plan.spec.params[r.name]}"
        elif p.type == "categorical":
            rng = str(p.choices)
        else:
            rng = f"{p.type} [{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + \
                (f" step {p.step:g}" if p.step else "")
        when = ", ".join(f"{k}={v}" for k, v in (p.when or {}).items()) if p else ""
        if r.method and plan.spec.prefixed and not plan.spec.compose:
            when = ", ".join(x for x in (f"method={r.method}", when) if x)
        table.add_row(r.name, rng, "" if p is None else str(p.default), when)
    return table


def _top_table(result) -> Table:
    s = result.spec
    table = Table("#", "trial", s.metric, "epochs", "status", "parameters",
                  title=f"top {TOP} of {len(result.trials)} ({s.metric} at each trial's last epoch)")
    for i, t in enumerate(result.trials[:TOP], 1):
        value = "-" if t.value is None else f"{t.value:.4f}"
        # the trial's name shows its method: drop `method` and the parameters' prefixes
        shown = {k.split(".", 1)[-1] if s.prefixed and not s.compose else k: v
                 for k, v in t.config.items() if k != "method"}
        table.add_row(str(i), t.name, value, f"{t.epochs}/{s.epochs}", t.status, _params(shown))
    return table
