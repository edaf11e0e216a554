"""The pending spool: MLflow writes a sweep could not send, kept for the next ``--resume``.

``<run_dir>/mlflow_pending.jsonl`` holds one JSON line per *segment*: the store the writes were
meant for (password masked), its experiment id, the run table their keys refer to
(``"parent"``, ``"teacher"``, trial id → run id) and the operations in order (``op.to_json()``).
Files an upload needs are copied under ``<run_dir>/.mlflow_spool/`` (Ray may remove the
originals). While a segment replays, the file is renamed ``mlflow_pending.replaying``.

A line or operation that cannot be read back (a damaged file, another version's format) is
skipped with a warning and copied to ``mlflow_pending.skipped.jsonl``: never a crash, never
dropped without a word.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdtune.redact import redact, redact_data
from kdtune.tracking.ops import Artifact, Op, OpError, from_json
from kdtune.tracking.schema import PENDING_FILE, SKIPPED_FILE, SPOOL_DIR

log_ = logging.getLogger("kdtune.tracking")


@dataclass
class Segment:
    """Writes one writer could not send: the store they were meant for (None: the current
    writer's), its experiment, the run table their keys refer to, and the operations."""

    uri: str | None
    experiment_id: str | None
    runs: dict[str, str]
    ops: list[Op] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The segment as one spool line's object, secrets masked (what MLflow would get anyway)."""
        return {"uri": redact(self.uri) if self.uri else self.uri, "experiment_id": self.experiment_id,
                "runs": dict(self.runs), "ops": [redact_data(op.to_json()) for op in self.ops]}


def save(run_dir: Path, segment: Segment) -> None:
    """Append ``segment`` to the spool, its uploads' files copied beside it first."""
    segment = replace(segment, ops=[_keep_file(run_dir, op) for op in segment.ops])
    try:
        append(run_dir, [segment])
    except OSError as e:  # the last resort: say what is lost, loudly
        log_.error("cannot save %d unsent MLflow writes to %s: %s", len(segment.ops), run_dir, e)


def append(run_dir: Path, segments: list[Segment]) -> None:
    """Append segments to the spool as they are (OSError when the folder takes no file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / PENDING_FILE, "a") as f:
        for seg in segments:
            f.write(json.dumps(seg.to_json(), default=str) + "\n")


def load(run_dir: Path) -> list[Segment]:
    """The segments saved by earlier writers, the spool renamed ``…replaying`` while they are
    sent (``finish`` removes it); unreadable entries are skipped (see the module's docstring)."""
    path = run_dir / PENDING_FILE
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        log_.error("cannot read %s: %s", path, e)
        return []
    segments: list[Segment] = []
    skipped: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            seg = json.loads(line)
            if not (isinstance(seg, dict) and isinstance(seg.get("ops", []), list)
                    and isinstance(seg.get("runs") or {}, dict)
                    and isinstance(seg.get("uri"), (str, type(None)))):
                raise ValueError("not a saved segment")
        except ValueError as e:
            log_.warning("%s line %d is unreadable (%s): skipped", path, n, e)
            skipped.append(line)
            continue
        ops: list[Op] = []
        for i, d in enumerate(seg.get("ops", []), 1):
            try:
                ops.append(from_json(d))
            except OpError as e:
                log_.warning("%s line %d, write %d is unreadable (%s): skipped", path, n, i, e)
                skipped.append(json.dumps(dict(seg, ops=[d]), default=str))
        segments.append(Segment(seg.get("uri"), seg.get("experiment_id"), dict(seg.get("runs") or {}), ops))
    kept = _keep_skipped(run_dir, skipped)
    if not segments:
        if kept:  # nothing left to send, and the unreadable rest is copied aside
            path.unlink(missing_ok=True)
        return []
    path.rename(path.with_suffix(".replaying"))
    return segments


def finish(run_dir: Path) -> None:
    """The replayed segments are sent or saved again: drop their copy."""
    (run_dir / PENDING_FILE).with_suffix(".replaying").unlink(missing_ok=True)


def _keep_file(run_dir: Path, op: Op) -> Op:
    """An upload pointed at a copy of its file beside the spool (files may be temporary or
    rotated by Ray); other operations as they are."""
    if not isinstance(op, Artifact):
        return op
    spool = run_dir / SPOOL_DIR
    path = Path(op.path)
    if not path.exists() or spool in path.parents:
        return op
    dst = spool / uuid.uuid4().hex / path.name
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
        if op.cleanup:
            shutil.rmtree(path.parent, ignore_errors=True)
        return replace(op, path=str(dst), cleanup=True)
    except OSError as e:
        log_.error("cannot keep %s for a later upload: %s", path, e)
        return op


def _keep_skipped(run_dir: Path, lines: list[str]) -> bool:
    """Unreadable spool entries copied aside for a person to look at; False if that failed."""
    if not lines:
        return True
    try:
        with open(run_dir / SKIPPED_FILE, "a") as f:
            f.writelines(line + "\n" for line in lines)
    except OSError as e:
        log_.error("cannot keep %d unreadable MLflow writes in %s: %s", len(lines), run_dir, e)
        return False
    log_.warning("%d unreadable MLflow writes kept in %s", len(lines), run_dir / SKIPPED_FILE)
    return True
