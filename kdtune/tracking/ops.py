"""The writer's operations: one frozen dataclass per kind of MLflow write.

``SweepWriter`` queues them and applies them in order; what is still unsent when a sweep ends
is saved to the pending spool (``<run_dir>/mlflow_pending.jsonl``) as ``op.to_json()`` and read
back with ``from_json``. Each operation is self-contained (run names, tags, YAML texts, file
paths) except for the run it refers to, named by ``key``: ``"parent"``, ``"teacher"`` or a
trial id, resolved through the writer's run table (saved beside the operations).

The JSON kinds and field names are those of the earlier dict operations, so a spool saved by
an older kdtune still replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable, Union

Metric = tuple[str, float, int]  # (name, value, step)


class OpError(ValueError):
    """A spool entry that is not an operation this kdtune knows (skipped on replay)."""


def _metrics(ms: Iterable[Any]) -> tuple[Metric, ...]:
    # JSON gives lists back: normalise so an op read from the spool equals the one saved
    return tuple((str(k), float(v), int(s)) for k, v, s in ms)


class _Op:
    """Serialisation shared by every operation."""

    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """The operation as a JSON-able dict, its kind under ``"op"``."""
        return {"op": self.KIND, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def describe(self) -> str:
        """``child(<trial id>)``: what a report line calls this operation."""
        return f"{self.KIND}({getattr(self, 'key', '')})"


@dataclass(frozen=True)
class StartParent(_Op):
    """The sweep's parent run: found again (``run_id``, its sweep uid, or with ``resume`` its
    run folder) or created with its params and ``spec.yaml``; then marked RUNNING."""

    KIND: ClassVar[str] = "parent"
    experiment: str
    name: str
    tags: dict[str, Any]
    params: dict[str, Any]
    spec_yaml: str
    resume: bool = False
    run_id: str | None = None
    artifact_location: str | None = None


@dataclass(frozen=True)
class RecordTeacher(_Op):
    """The teacher's own run, found by its key (or a registered model's source run) or created
    with its checkpoint and ended."""

    KIND: ClassVar[str] = "teacher"
    name: str
    tags: dict[str, Any]
    params: dict[str, Any]
    path: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None


@dataclass(frozen=True)
class StartChild(_Op):
    """A trial's child run under the parent (found again by its trial id, else created)."""

    KIND: ClassVar[str] = "child"
    key: str
    trial_id: str
    name: str
    tags: dict[str, Any]
    params: dict[str, Any]
    config_yaml: str
    spec_yaml: str


@dataclass(frozen=True)
class Log(_Op):
    """Metrics, params and tags of one run (``ts``: when they were reported, ms)."""

    KIND: ClassVar[str] = "log"
    key: str
    metrics: tuple[Metric, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    ts: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _metrics(self.metrics))


@dataclass(frozen=True)
class Text(_Op):
    """A text artifact (``file``: its name in the run)."""

    KIND: ClassVar[str] = "text"
    key: str
    text: str
    file: str


@dataclass(frozen=True)
class Artifact(_Op):
    """A file uploaded into folder ``dir`` of a run; with ``cleanup`` its folder is removed after."""

    KIND: ClassVar[str] = "artifact"
    key: str
    path: str
    dir: str | None = None
    cleanup: bool = False


@dataclass(frozen=True)
class End(_Op):
    """A run ended with ``status`` (FINISHED, FAILED, KILLED)."""

    KIND: ClassVar[str] = "end"
    key: str
    status: str


@dataclass(frozen=True)
class Settle(_Op):
    """A trial's run made whole from its full result history (after a driver crash); see
    ``SweepWriter._settle``."""

    KIND: ClassVar[str] = "settle"
    key: str
    trial_id: str
    name: str
    child_tags: dict[str, Any]
    params: dict[str, Any]
    config_yaml: str
    spec_yaml: str
    metrics: tuple[Metric, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)
    status: str | None = None
    checkpoint: str | None = None
    ts: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _metrics(self.metrics))

    def child(self) -> StartChild:
        """The child run this trial gets when it has none yet."""
        return StartChild(key=self.key, trial_id=self.trial_id, name=self.name, tags=self.child_tags,
                          params=self.params, config_yaml=self.config_yaml, spec_yaml=self.spec_yaml)


@dataclass(frozen=True)
class Retire(_Op):
    """After a restore: the parent's trial runs whose trial ids are neither in ``known`` nor
    started by this writer are retired (``kdtune.tracking.orphans``). Never spooled: it judges
    runs by one driver's trials, and the next resumed driver sends its own."""

    KIND: ClassVar[str] = "retire"
    key: str  # "parent": ordered behind the parent's own writes
    known: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", tuple(str(k) for k in self.known))


Op = Union[StartParent, RecordTeacher, StartChild, Log, Text, Artifact, End, Settle, Retire]
KINDS: dict[str, type[_Op]] = {c.KIND: c for c in (StartParent, RecordTeacher, StartChild, Log, Text,
                                                    Artifact, End, Settle, Retire)}


def from_json(d: Any) -> Op:
    """The operation ``to_json`` saved (unknown keys are ignored); OpError when it is not one."""
    if not isinstance(d, dict):
        raise OpError(f"not an operation: {type(d).__name__}")
    kind = d.get("op")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise OpError(f"unknown operation {kind!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in names})  # type: ignore[return-value]
    except (TypeError, ValueError) as e:  # a missing field, a metric that is not (name, value, step)
        raise OpError(f"{cls.KIND}: {e}") from None
