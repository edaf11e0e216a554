"""What every command shares: the consoles, ``--set``, and one-line errors with exit codes.

Bad input (a ``SpecError``) prints ``error: <field>: <what is wrong and the fix>`` on stderr
and exits 2; nothing has started by then.
"""

from __future__ import annotations

import functools
import traceback
from typing import Any, Callable

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


def exits_on(kind: Callable[[], type[BaseException]], code: int,
             text: Callable[[BaseException], str] = str):
    """A decorator: an exception of ``kind()`` (a function, so a heavy module is imported only
    when the command runs) becomes one line on stderr and exit ``code``."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            caught = kind()
            try:
                return fn(*a, **kw)
            except caught as e:
                fail(text(e), code)
            except EOFError as e:  # click would print a bare "Aborted." (it means a closed prompt)
                traceback.print_exc()
                fail(f"{type(e).__name__}: {e} (a file ended early: the traceback above names it)", 1)
        return wrapper
    return decorate


# SpecError (bad input) → one line, exit 2: every command that reads a spec or a store
guarded = exits_on(lambda: SpecError, 2)


def say(msg: str) -> None:
    """A plain line on stdout (secrets masked, no Rich markup or highlighting)."""
    console.print(escape(redact(msg)), highlight=False, soft_wrap=True)


def fmt(m: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def params_text(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
