"""Tune's saved experiment state, checked before ``Tuner.restore`` (``sweep run --resume``).

Tune copies its snapshot (``experiment_state-<session>.json``, ``search_gen_state-…json``,
``searcher-state-…pkl``, ``callback-states-…pkl``) from the driver's staging folder to storage
with plain copies, so a driver killed by SIGKILL mid-copy can leave a file cut short. Tune's own
restore then logs "Failed to restore the run state" and *restarts the experiment*: every trial
finished so far is forgotten and ``best.yaml`` is overwritten by the new run's few trials.

So before restoring, each driver session's snapshot is read whole (JSON parsed, pickles, even
the ones Tune names ``.json``, walked opcode by opcode up to their STOP, nothing unpickled): sessions newer than the newest whole
one are moved aside (renamed ``.cut-<name>``, so Tune's globs skip them) and Tune restores that
one; if none is whole the resume stops with one line. A cut ``tuner.pkl`` (written once, when
the sweep starts) is written again from the spec.

Before a cut session is given up, its *staging copy* is tried: Tune writes each snapshot on the
driver's machine first (``<ray temp>/session_*/artifacts/<time>/<experiment>/driver_artifacts``)
and only then copies it to storage, so when the copy was cut the staging files are usually
whole. Resumed on that machine, the session's files are copied again from there, and nothing
is lost (without it, the only session of a sweep killed mid-copy could not be resumed). The
Ray temp folder is Ray's default (``$RAY_TMPDIR``, ``$TMPDIR`` or /tmp, then ``ray``); a
cluster started with ``--temp-dir`` elsewhere keeps its staging copies where this does not look.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

import pyarrow.fs

from kdtune.spec.paths import is_uri
from kdtune.spec.schema import SpecError

# Tune's snapshot files: <kind>-<session>.<ext> (ray.tune TuneController, SearchGenerator,
# Searcher and CallbackList CKPT_FILE_TMPL); the session is a sortable timestamp.
SNAPSHOT = re.compile(r"^(experiment_state|search_gen_state|searcher-state|callback-states)-(.+)\.(json|pkl)$")
MAIN = "experiment_state"  # without it a session cannot be restored
TUNER_PKL = "tuner.pkl"


def _fs(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def whole(data: bytes, name: str) -> bool:
    """The file reads to its end: JSON that parses, a pickle whose opcodes reach STOP."""
    try:
        if data[:1] == b"\x80":  # a pickle (Tune's search_gen_state-*.json is one too)
            for _ in pickletools.genops(data):  # raises on a stream that ends before STOP
                pass
        else:
            json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return bool(data)


def _read(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_file(path) as f:
        return f.readall()


def check_state(path: str, log: Callable[[str], None] = print) -> bool:
    """Make the newest whole snapshot of the experiment at ``path`` the one Tune restores.

    Returns whether ``tuner.pkl`` is missing or cut (the caller writes it again). Raises
    ``SpecError`` when no session's snapshot is whole."""
    fs, root = _fs(path)
    sessions: dict[str, list[str]] = defaultdict(list)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        m = SNAPSHOT.match(info.base_name)
        if m and info.type == pyarrow.fs.FileType.File:
            sessions[m.group(2)].append(info.base_name)
    newer: list[str] = []  # sessions after the newest whole one
    cut: list[str] = []    # what was wrong with them
    for session in sorted(sessions, reverse=True):
        names = sessions[session]
        bad = [n for n in names if not whole(_read(fs, f"{root}/{n}"), n)]
        if not bad and any(n.startswith(MAIN) for n in names):
            break
        if _mend(fs, root, session, log) and all(whole(_read(fs, f"{root}/{n}"), n) for n in names):
            break
        newer.append(session)
        cut += bad or [f"no {MAIN} of {session}"]
    else:
        if sessions:  # nothing moved: the folder stays as the killed driver left it
            raise SpecError(f"--resume: Tune's saved state at {path} was cut short when its driver "
                            f"was killed ({', '.join(cut)}) and no earlier snapshot is whole; start "
                            f"the sweep again under a new name (--set name=<new>)")
    for session in newer:
        for n in sessions[session]:
            fs.move(f"{root}/{n}", f"{root}/.cut-{n}")
    if newer:
        log(f"resume: Tune's newest saved state was cut short when its driver was killed "
            f"({', '.join(cut)}; moved aside as .cut-*): resuming from the snapshot before it; "
            f"trials that ended after that snapshot run again from their last checkpoint")
    tuner = f"{root}/{TUNER_PKL}"
    if fs.get_file_info(tuner).type != pyarrow.fs.FileType.File:
        return True
    return not whole(_read(fs, tuner), TUNER_PKL)


def ray_temp_dir() -> Path:
    """Ray's default temp folder (as ``ray._common.utils.get_default_ray_temp_dir`` finds it)."""
    return Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"


def _mend(fs: pyarrow.fs.FileSystem, root: str, session: str, log: Callable[[str], None]) -> bool:
    """Copy a cut session's snapshot again from the driver's staging folder, when one on this
    machine holds that session whole (its experiment state included); whether it did."""
    name = Path(root).name  # Tune's experiment folder name, also the staging folder's
    found = sorted(ray_temp_dir().glob(f"session_*/artifacts/*/{name}/driver_artifacts"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in found:
        files = [p for p in folder.iterdir() if (m := SNAPSHOT.match(p.name)) and m.group(2) == session]
        if not any(p.name.startswith(MAIN) for p in files) or not all(whole(p.read_bytes(), p.name) for p in files):
            continue
        for p in files:
            with fs.open_output_stream(f"{root}/{p.name}") as out:
                out.write(p.read_bytes())
        log(f"resume: Tune's saved state of session {session} was cut short when its driver was "
            f"killed; copied it again, whole, from the driver's staging folder {folder}")
        return True
    return False
