"""``OpQueue``: the writer's queue of operations, with per-run coalescing and a bound.

Order: MLflow sees only the order *within* a run, and that is kept. A metric/tag write
(``Log``) joins its run's earlier ``Log`` batch still waiting in the queue, so one
``log_batch`` call sends them; any other operation of the run (its end, a text, an upload, a
settle) closes the run's open batch, so later writes queue behind it. Several writer lanes
(threads) may apply batches of *different* runs at once, never two of one run; the parent's
and the teacher's operations are barriers that nothing passes (the trials' runs need their
ids). What is unsent at the end goes to the spool in queue order.

The bound is on operations, not batches. A producer that finds ``max_ops`` or more queued
waits until the writer frees room, at most ``max_block_s`` per call, and then queues its
operation anyway: back-pressure slows Tune's callback thread, it never drops a write (a final
result or a trial's end included). While the writer's calls fail (an outage) nobody waits:
the sweep runs on and what is unsent goes to the pending spool at the end, as before.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from kdtune.tracking.ops import Log, Op, RecordTeacher, StartParent

# MLflow's limits per log_batch call (mlflow/utils/validation.py): 1000 metrics, 100 params,
# 100 tags, 1000 entities in all, and a 1 MB request.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
BARRIERS = frozenset({"parent", "teacher"})  # runs whose ids the trials' runs refer to
MAX_BYTES = 500_000  # an estimate of the JSON body; half the server's limit leaves room
_METRIC_BYTES = 80  # {"key":…,"value":…,"timestamp":…,"step":…} beside the key's length


def run_key(op: Op) -> str | None:
    """The run an operation writes to (``"parent"``, ``"teacher"`` or a trial id)."""
    if isinstance(op, StartParent):
        return "parent"
    if isinstance(op, RecordTeacher):
        return "teacher"
    return getattr(op, "key", None)


def _size(op: Log) -> int:
    return (sum(_METRIC_BYTES + len(k) for k, _, _ in op.metrics)
            + sum(len(str(k)) + len(str(v)) + 40 for d in (op.params, op.tags) for k, v in d.items()))


@dataclass(eq=False)
class Batch:
    """Operations the writer applies as one: a single operation, or ``Log`` operations of one
    run (sent with one ``log_batch`` call; within MLflow's per-call limits)."""

    key: str | None
    ops: list[Op]
    metrics: int = 0
    params: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    bytes: int = 0
    sealed: bool = False  # the writer is applying it: nothing joins any more

    @classmethod
    def of(cls, op: Op) -> Batch:
        """A batch of one operation."""
        b = cls(run_key(op), [op])
        if isinstance(op, Log):
            b.metrics, b.params, b.tags, b.bytes = len(op.metrics), set(op.params), set(op.tags), _size(op)
        return b

    @property
    def coalesced(self) -> bool:
        """More than one operation, to be sent as one ``log_batch`` call."""
        return len(self.ops) > 1

    def fits(self, op: Log) -> bool:
        """``op`` can join: same run, still one call within MLflow's limits, and no param or
        tag set twice (then the later value must win, which one call cannot say)."""
        if self.sealed or not isinstance(self.ops[0], Log):
            return False
        m, p, t = self.metrics + len(op.metrics), len(self.params) + len(op.params), len(self.tags) + len(op.tags)
        return (m <= MAX_METRICS and p <= MAX_PARAMS and t <= MAX_TAGS and m + p + t <= MAX_ENTITIES
                and self.bytes + _size(op) <= MAX_BYTES
                and not (self.params & op.params.keys()) and not (self.tags & op.tags.keys()))

    def add(self, op: Log) -> None:
        """Append ``op`` (``fits(op)`` said yes)."""
        self.ops.append(op)
        self.metrics += len(op.metrics)
        self.params |= op.params.keys()
        self.tags |= op.tags.keys()
        self.bytes += _size(op)


class OpQueue:
    """Batches in order, a count of queued operations, and the bound (see the module docstring).

    Writer lanes (threads) take batches with ``next()``, which seals a batch and marks its run
    busy, and give them back with ``done()`` (applied or given up), ``release()`` (kept for a
    retry) or ``split()``. Batches of different runs may be applied at once; one run's never.
    """

    def __init__(self, max_ops: int = 10_000, max_block_s: float = 2.0):
        self.max_ops = max_ops
        self.max_block_s = max_block_s
        self.cv = threading.Condition()
        self._q: collections.deque[Batch] = collections.deque()
        self._open: dict[str, Batch] = {}  # run key → its Log batch that may still grow
        self._busy: set[str | None] = set()  # run keys a writer lane is applying
        self._n = 0
        self.closing = False  # flush what is queued, then stop
        self.stopped = False  # stop now
        self.failing = False  # the writer's calls fail: producers do not wait
        self.max_depth = 0
        self.coalesced = 0  # operations that joined an earlier batch
        self.blocked_s = 0.0  # producer time spent waiting for room
        self.blocked_puts = 0

    def pending(self) -> int:
        """Operations queued (the one being applied included)."""
        return self._n

    def put(self, op: Op) -> None:
        """Queue ``op`` (after waiting for room, see the module docstring); never drops it."""
        with self.cv:
            if self._n >= self.max_ops and not (self.failing or self.stopped):
                t0 = time.monotonic()
                self.cv.wait_for(lambda: self._n < self.max_ops or self.failing or self.stopped,
                                 timeout=self.max_block_s)
                self.blocked_s += time.monotonic() - t0
                self.blocked_puts += 1
            self._add(op)
            self._n += 1
            self.max_depth = max(self.max_depth, self._n)
            self.cv.notify_all()

    def _add(self, op: Op) -> None:
        key = run_key(op)
        if not isinstance(op, Log):
            self._open.pop(key, None)  # later writes of this run queue behind this operation
            self._q.append(Batch.of(op))
            return
        open_ = self._open.get(key)
        if open_ is not None and open_.fits(op):
            open_.add(op)
            self.coalesced += 1
            return
        b = Batch.of(op)
        self._q.append(b)
        self._open[key] = b

    def next(self, timeout: float | None = None) -> Batch | None:
        """The first batch a writer lane may apply, sealed and marked busy (see ``_pick``), once
        there is one; None when stopped, closing with nothing left, or after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cv:
            while not self.stopped:
                b = self._pick()
                if b is not None:
                    b.sealed = True
                    self._busy.add(b.key)
                    if self._open.get(b.key) is b:
                        del self._open[b.key]
                    return b
                if self.closing and not self._q:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.cv.wait(left)
            return None

    def _pick(self) -> Batch | None:
        # Per-run order: never two batches of one run at once, so the first of a run not busy
        # is the oldest of that run. The parent's and the teacher's operations are barriers:
        # trials' runs need their ids, so nothing passes them and they wait for the lanes.
        if self._busy & BARRIERS:
            return None
        for b in self._q:
            if b.key in BARRIERS:
                return None if self._busy else b
            if b.key not in self._busy:
                return b
        return None

    def done(self, batch: Batch) -> None:
        """``batch`` is applied or given up: its run free for the next lane, room for producers."""
        with self.cv:
            self._busy.discard(batch.key)
            if self._remove(batch):
                self._n -= len(batch.ops)
            self.cv.notify_all()

    def release(self, batch: Batch) -> None:
        """``batch`` stays queued (a retry after the backoff): its run free for any lane."""
        with self.cv:
            self._busy.discard(batch.key)
            self.cv.notify_all()

    def split(self, batch: Batch) -> None:
        """``batch`` replaced in place by one batch per operation (to find the one MLflow
        rejects), its run free again."""
        with self.cv:
            self._busy.discard(batch.key)
            at = self._index(batch)
            if at is not None:  # (else stopped meanwhile: the spool has them)
                del self._q[at]
                for k, op in enumerate(batch.ops):
                    one = Batch.of(op)
                    one.sealed = True
                    self._q.insert(at + k, one)
            self.cv.notify_all()

    def _index(self, batch: Batch) -> int | None:
        # identity, not equality; a taken batch is near the head (at most one per lane before it)
        return next((i for i, b in enumerate(self._q) if b is batch), None)

    def _remove(self, batch: Batch) -> bool:
        at = self._index(batch)
        if at is None:
            return False
        del self._q[at]
        return True

    def set_failing(self, failing: bool) -> None:
        """The writer's calls fail (or work again); waiting producers are let go."""
        with self.cv:
            self.failing = failing
            self.cv.notify_all()

    def wait_stopped(self, timeout: float) -> None:
        """Sleep ``timeout`` s (a retry's backoff), or less if the queue is stopped."""
        with self.cv:
            self.cv.wait_for(lambda: self.stopped, timeout=timeout)

    def close(self) -> None:
        """Flush what is queued, then let the writer's loop end."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()

    def stop(self) -> list[Op]:
        """Stop now; the operations not applied, in order (for the spool)."""
        with self.cv:
            self.stopped = True
            self.cv.notify_all()
            left = [op for b in self._q for op in b.ops]
            self._q.clear()
            self._open.clear()
            self._n = 0
            return left


__all__ = ["Batch", "OpQueue", "run_key"]
