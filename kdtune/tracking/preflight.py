"""Before a sweep: refuse a tracking store that cannot take its writes, in one line, before Ray
starts (a dead server, refused credentials, an unreachable database, an unwritable folder).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kdtune.redact import redact
from kdtune.spec import Spec, SpecError
from kdtune.spec.paths import tracking_uri
from kdtune.tracking.client import _one_line

_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking(spec: Spec, timeout: float | None = None) -> None:
    """Refuse (SpecError, one line) a tracking store that cannot take the sweep's writes, before
    Ray starts: an http(s) server that does not answer within ``timeout`` s
    ($KDTUNE_TRACKING_CHECK_S, default 5) or refuses the credentials; a database host that
    does not accept a connection; a sqlite/file store whose folder is not a writable folder.
    Creates nothing (a missing folder is checked through its nearest existing parent)."""
    uri = tracking_uri(spec)
    field = ("tracking.uri" if spec.tracking.uri else
             "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri")
    timeout = float(os.environ.get("KDTUNE_TRACKING_CHECK_S", 5)) if timeout is None else timeout
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    shown = redact(uri)
    if scheme in ("http", "https"):
        _check_server(uri, field, shown, timeout)
    elif scheme == "sqlite":
        path = uri.split("://", 1)[1].removeprefix("/")  # sqlite:///rel, sqlite:////abs
        if path and path != ":memory:":
            _check_folder(Path(path).expanduser().parent, field, shown, Path(path))
    elif scheme == "file":
        path = urlsplit(uri).path if "://" in uri else uri
        _check_folder(Path(path).expanduser(), field, shown)
    elif scheme in _DB_PORTS:
        u = urlsplit(uri)
        host, port = u.hostname or "localhost", u.port or _DB_PORTS[scheme]
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise SpecError(f"{field}: the database at {shown} does not answer on {host}:{port} "
                            f"within {timeout:g}s ({_one_line(e)}); start it or fix the URI") from None


def _check_server(uri: str, field: str, shown: str, timeout: float) -> None:
    """One authenticated request, the way MLflow's client will make it (env credentials first,
    then a user:password in the URI; a token as a bearer)."""
    u = urlsplit(uri)
    base = f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path.rstrip('/')}"  # no userinfo
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or (unquote(u.username) if u.username else None)
    pw = os.environ.get("MLFLOW_TRACKING_PASSWORD") or (unquote(u.password) if u.password else None)
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif user and pw:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
    ctx = None
    if u.scheme == "https":
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        ctx = ssl._create_unverified_context() if insecure else ssl.create_default_context(
            cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx):
            return
    except urllib.error.HTTPError as e:
        code = e.code
    except (OSError, ValueError) as e:  # refused, unknown host, timeout, TLS
        reason = getattr(e, "reason", e)
        raise SpecError(f"{field}: the MLflow server at {shown} does not answer within {timeout:g}s "
                        f"({redact(str(reason))}); start it (e.g. `kdtune ui`) or fix the URI") from None
    if code == 401:
        how = ("refused the credentials" if user or os.environ.get("MLFLOW_TRACKING_TOKEN") else
               "needs credentials")
        raise SpecError(f"{field}: the MLflow server at {shown} {how} (HTTP 401); set "
                        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if code == 403:
        raise SpecError(f"{field}: the MLflow server at {shown} denies user {user!r} (HTTP 403); "
                        "ask its admin for access")
    raise SpecError(f"{field}: {shown} answered HTTP {code} to an MLflow API call; is it an MLflow "
                    "tracking server (the URI without /api or #/ paths)?")


def _check_folder(folder: Path, field: str, shown: str, db: Path | None = None) -> None:
    """``folder`` (or, while it does not exist yet, its nearest existing parent) takes files."""
    if db is not None and db.exists() and not db.is_file():
        raise SpecError(f"{field}: {shown}: {str(db)!r} exists and is not a file")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # created at the first write; check where it will be created
    if not probe.is_dir():
        raise SpecError(f"{field}: {shown}: {str(probe)!r} is not a folder, so the store "
                        f"cannot be created in {str(folder)!r}")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise SpecError(f"{field}: {shown}: the folder {str(probe)!r} is not writable "
                        f"({e.strerror or type(e).__name__}); choose another storage or tracking.uri") from None
