"""What every command shares: the consoles, ``--set``, and one-line errors with exit codes.

Bad input (a ``SpecError``) prints ``error: <field>: <what is wrong and the fix>`` on stderr
and exits 2; nothing has started by then.
"""

from __future__ import annotations

import functools
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from kdtune.redact import redact
from kdtune.spec.schema import SpecError

console = Console()
err = Console(stderr=True)

SetOpt = typer.Option([], "--set", help="Override a spec field: a.b=VALUE (VALUE is YAML).")


def fail(msg: str, code: int = 2) -> None:
    """One line on stderr, secrets masked; the message is text, not Rich markup (``[kd, ft]``)."""
    err.print(f"[red]error:[/red] {escape(redact(msg))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn):
    """Turn SpecError (bad input) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except SpecError as e:
            fail(str(e))
    return wrapper


def say(msg: str) -> None:
    """A plain line on stdout (secrets masked, no Rich markup or highlighting)."""
    console.print(escape(redact(msg)), highlight=False, soft_wrap=True)


def fmt(m: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def params_text(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
