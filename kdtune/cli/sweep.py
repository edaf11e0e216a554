"""``kdtune sweep run``: the sweep group (``list`` and the cluster commands join it from
``kdtune/cli/tracking.py`` and ``kdtune/cli/cluster.py``). Spec errors exit 2 before Ray starts.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kdtune.cli.common import SetOpt, console, fail, guarded, params_text, say

sweep_app = typer.Typer(help="Hyperparameter sweeps on Ray Tune (local, or a cluster via RAY_ADDRESS).",
                        no_args_is_help=True)

TOP = 5


@sweep_app.command("run")
@guarded
def run(spec: Path = typer.Argument(..., help="Spec YAML (see examples/)."),
        set_: list[str] = SetOpt,
        resume: bool = typer.Option(False, "--resume", help="Continue the sweep of this name: "
                                    "finished trials stay, unfinished ones restart from their "
                                    "last checkpoint."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and search space; "
                                     "start nothing."),
        verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's, Tune's and "
                                     "MLflow's own messages (hidden by default).")) -> None:
    """Search a spec's hyperparameters with Ray Tune; writes <storage>/<name>/best.yaml.

    Shows a live progress panel on a terminal; elsewhere (CI, logs, pipes) a status line every
    30 s (KDTUNE_PROGRESS_S sets the seconds) and one line per finished trial."""
    from kdtune import api  # lazy: torch, Ray and MLflow load only for the command that runs
    from kdtune.checks import load_spec  # lazy: as above
    from kdtune.tune.plan import plan_sweep  # lazy: as above
    from kdtune.tune.quiet import quiet  # lazy: as above

    quiet(verbose)  # before MLflow's store opens (it announces its tables) and Ray starts

    s = load_spec(spec, set_)
    if dry_run:
        plan = plan_sweep(s)
        for line in plan.lines():
            say(line)
        console.print(_space_table(plan))
        for p in plan.first:
            say(f"evaluated first (paper defaults): {params_text(p)}")
        return
    from kdtune.tune.guard import SweepFailing  # lazy: as above

    try:
        result = api.sweep(s, resume=resume, log=say, verbose=verbose)
    except SweepFailing as e:
        fail(str(e), code=1)
    console.print(_top_table(result))
    for t in result.errors:  # one line per trial (grep-able)
        say(f"failed {t.name}: {t.error or ''} ({t.path}/error.txt)")
    if result.best is None:
        say(f"no trial reported {s.objective}; see the errors above")
        raise typer.Exit(1)
    say(f"best: {result.best.name} {s.objective} {result.best.value:.4f} "
        f"(epoch {result.best.epochs}/{s.epochs})")
    say(f"best.yaml: {result.best_yaml}")
    say(f"reproduce: kdtune train {result.best_yaml}")


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
    from kdtune.params.walk import display_params  # lazy: as above

    s = result.spec
    table = Table("#", "trial", s.objective, "epochs", "status", "parameters",
                  title=f"top {TOP} of {len(result.trials)} ({s.objective} at each trial's last epoch)")
    for i, t in enumerate(result.trials[:TOP], 1):
        value = "-" if t.value is None else f"{t.value:.4f}"
        table.add_row(str(i), t.name, value, f"{t.epochs}/{s.epochs}", t.status,
                      params_text(display_params(s, t.config)))
    return table


@sweep_app.command("cleanup")
def cleanup() -> None:
    """End the Ray processes left behind by kdtune drivers that were killed (only those)."""
    from kdtune.tune import session  # lazy: as above

    n = session.cleanup(log=say)
    say(f"{n} process(es) ended" if n else "nothing to clean up")
