"""Secrets out of everything kdtune writes or prints: one helper, used by config, tracking, CLI.

What counts as a secret:

- the password of a URI's userinfo: ``postgresql://u:pw@h/db`` → ``postgresql://u:***@h/db``,
  ``http://user:pw@host`` → ``http://user:***@host`` (the user name stays: it helps debugging);
- credential-like query parameters: ``?token=…``, ``&password=…``, ``X-Amz-Signature=…`` …;
- the value of any environment variable whose name says it holds one (``*TOKEN*``,
  ``*PASSWORD*``, ``*SECRET*``, ``*ACCESS_KEY*``, ``*API_KEY*``, ``*CREDENTIAL*``: e.g.
  ``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
  ``RAY_AUTH_TOKEN``), wherever it appears (values shorter than 6 characters are left alone:
  replacing "1234" in every number would hide more than it protects).

Credentials reach kdtune's clients from the environment (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, AWS keys); a password written into a URI still works, but every
copy kdtune writes (spec.yaml, best.yaml, MLflow params and artifacts, console lines, the
pending-writes report) carries ``***`` instead.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*):(?P<pw>[^@/\s'\"]+)@")
_QUERY = re.compile(r"(?P<head>[?&;](?:access_token|token|password|passwd|pwd|secret|api_key|apikey|"
                    r"key|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
                    r"(?P<val>[^&\s'\"#]+)", re.IGNORECASE)
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|ACCESS_KEY|API_KEY|CREDENTIAL|PRIVATE_KEY",
                          re.IGNORECASE)
# mapping keys whose whole value is a secret (`password`, `db_password`, `api_token` …; not
# `num_tokens` or `key_dim`, which are model settings)
_SECRET_KEY = re.compile(r"^(?:.*[_.\-])?(?:password|passwd|secret|token|api_?key|access_?key|"
                         r"secret_?key|credentials?)$", re.IGNORECASE)
_MIN_ENV_SECRET = 6


def secret_env_values(env: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (longest first)."""
    env = os.environ if env is None else env
    vals = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_ENV_SECRET}
    return sorted(vals, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***`` (see the module docstring)."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    out = _QUERY.sub(lambda m: f"{m['head']}{MASK}", out)
    for v in secret_env_values():
        if v in out:
            out = out.replace(v, MASK)
    return out


def redact_data(data: Any) -> Any:
    """A copy of nested dicts/lists with every string redacted, and the values of keys named
    like secrets (``password``, ``api_token`` …) masked whole."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.match(k) and v not in (None, "")
                    else redact_data(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_data(v) for v in data)
    return data


__all__ = ["MASK", "redact", "redact_data", "secret_env_values"]
