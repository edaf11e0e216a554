"""The MLflow writer under load (no server: a sqlite store in the test's temp folder).

- 64 fake trials' results through the real ``MLflowCallback`` and ``SweepWriter``: every metric
  point arrives exactly once, and metric writes queued behind each other were coalesced (fewer
  MLflow calls than operations);
- the bounded queue: a producer over the bound waits (back-pressure) and its operation, a
  trial's end included, is queued all the same; it is let go as the writer frees room; and it
  never waits on a store that is down.

The load with a real server (PostgreSQL behind ``mlflow server``): benchmarks/bench_tracking.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from test_tracking import FakeTrial, write_spec

from kdtune.checks import load_spec
from kdtune.spec import paths
from kdtune.tracking import PENDING_FILE, SweepWriter, client
from kdtune.tracking.ops import End, Log, StartChild, StartParent
from kdtune.tracking.queue import OpQueue
from kdtune.tune.callbacks import MLflowCallback

KEYS = ("val_acc", "loss", "ce")


class Counting:
    """A client that counts its calls by name (and can be slow)."""

    def __init__(self, real, delay: float = 0.0):
        self.real, self.delay, self.calls = real, delay, {}

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def call(*a, **kw):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.delay and name == "log_batch":
                time.sleep(self.delay)
            return fn(*a, **kw)
        return call


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_spec(write_spec(tmp_path / "spec.yaml", name="load", method="scratch", epochs=4))


def test_64_trials_every_point_once_and_writes_coalesced(spec):
    gate = threading.Event()  # the store answers only once every result is queued
    made: list[Counting] = []

    def factory(uri):
        gate.wait(60)
        made.append(Counting(client(uri)))
        return made[-1]

    w = SweepWriter(spec, client_factory=factory, log=lambda m: None)
    cb = MLflowCallback(spec, writer=w, log=lambda m: None)
    cb.setup()
    trials = [FakeTrial(i, {"lr": 0.01 * (i + 1), "batch_size": 32}) for i in range(64)]
    sent: dict[str, dict[str, dict[int, float]]] = {t.trial_id: {k: {} for k in KEYS} for t in trials}
    for t in trials:
        cb.on_trial_start(0, trials, t)
    for epoch in range(1, 5):  # interleaved, as concurrent trials report
        for i, t in enumerate(trials):
            result = {"epoch": epoch, "training_iteration": epoch, "time_this_iter_s": 0.1}
            for j, k in enumerate(KEYS):
                result[k] = sent[t.trial_id][k][epoch] = i + epoch / 10 + j / 1000
            t.last_result = result
            cb.on_trial_result(0, trials, t, result)
    for t in trials:
        t.status = "TERMINATED"
        cb.on_trial_complete(0, trials, t)
    log_ops = 64 * 4 + 64  # results, and each trial's closing tags
    gate.set()
    report = cb.close()
    assert "NOT sent" not in report and "rejected" not in report

    stats = w.stats()
    calls = made[0].calls
    assert stats["coalesced"] >= 64 * 4  # each trial's results and tags joined its first write
    # one call per trial for its metrics and tags, one for the params of each run created
    assert calls["log_batch"] < log_ops / 2
    assert stats["sent"] == 1 + 64 * 2 + log_ops + 1 and stats["batches"] < stats["sent"]

    c = MlflowClient(paths.tracking_uri(spec))
    exp = c.get_experiment_by_name("load")
    runs = c.search_runs([exp.experiment_id], "tags.`kdtune.role` = 'trial'", max_results=1000)
    assert len(runs) == 64 and {r.info.status for r in runs} == {"FINISHED"}
    lost = dup = 0
    for r in runs:
        assert r.data.tags["kdtune.last_epoch"] == "4"
        tid = r.data.tags["kdtune.trial_id"]
        for k in KEYS:
            got = [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, k)]
            dup += len(got) - len(set(got))
            lost += len(set(sent[tid][k].items()) - set(got))
            assert {s for s, _ in got} == set(sent[tid][k])
    assert (lost, dup) == (0, 0)


def test_bounded_queue_waits_for_room_and_never_drops_the_end(spec):
    # 1. the store is stuck: over the bound a put waits (up to max_block_s), then queues anyway
    gate = threading.Event()

    def stuck(uri):
        gate.wait(60)
        return client(uri)

    w = SweepWriter(spec, client_factory=stuck, log=lambda m: None, max_queue=4, max_block_s=0.3)
    w.start_sweep()
    w.trial_start("a", "scratch_001", {"lr": 0.1})
    for step in range(1, 7):
        w.trial_metrics("a", [("val_acc", step / 10, step)])
    t0 = time.monotonic()
    w.trial_end("a", "FINISHED")
    assert time.monotonic() - t0 >= 0.25  # it waited for room ...
    assert w.pending() == 9  # ... and was queued all the same (nothing dropped)
    assert w.stats()["blocked_puts"] == 5
    gate.set()
    report = w.close(timeout=60)
    assert "NOT sent" not in report and "Tune waited" in report
    c = MlflowClient(paths.tracking_uri(spec))
    run = c.get_run(w.runs["a"])
    assert run.info.status == "FINISHED"
    assert sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_acc")) == \
        [(s, s / 10) for s in range(1, 7)]

    # 2. a slow store: the producer is let go as soon as the writer frees room (not by the timeout)
    slow: list[Counting] = []

    def factory(uri):
        slow.append(Counting(client(uri), delay=0.02))
        return slow[-1]

    w = SweepWriter(spec, client_factory=factory, log=lambda m: None, max_queue=4, max_block_s=30)
    w.start_sweep()
    w.trial_start("b", "scratch_002", {"lr": 0.2})
    for step in range(1, 41):
        w.trial_metrics("b", [("val_acc", step / 100, step)])
    w.trial_end("b", "FINISHED")
    stats = w.stats()
    assert stats["blocked_puts"] > 0 and stats["blocked_s"] < 30 and stats["max_depth"] <= 4
    assert stats["coalesced"] > 0
    assert "NOT sent" not in w.close(timeout=60)
    run = c.get_run(w.runs["b"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "val_acc")) == list(range(1, 41))
    assert slow[0].calls["log_batch"] < 40  # some of the 40 results went out together


def test_a_store_that_is_down_makes_no_producer_wait(spec):
    class Down:
        def __getattr__(self, name):
            def call(*a, **kw):
                raise ConnectionError("connection refused (test outage)")
            return call

    w = SweepWriter(spec, client_factory=lambda uri: Down(), backoff=(0.05, 0.1), log=lambda m: None,
                    max_queue=2, max_block_s=60)
    t0 = time.monotonic()
    w.start_sweep()
    w.trial_start("c", "scratch_003", {"lr": 0.3})
    for step in range(1, 11):
        w.trial_metrics("c", [("val_acc", 0.5, step)])
    w.trial_end("c", "FINISHED")
    assert time.monotonic() - t0 < 30  # waited for the first failure at most, never a full block
    report = w.close(timeout=0.5)
    assert "13 NOT sent" in report
    assert (paths.run_dir(spec) / PENDING_FILE).is_file()


def test_queue_gives_a_run_to_one_lane_at_a_time_and_nothing_passes_the_parent():
    """The queue alone (no MLflow), as the writer's lanes use it: ``next`` hands out batches of
    different runs at once, a run's next batch only after its previous one is given back, and
    the parent's operations wait for the lanes and let nothing pass."""

    def child(k):
        return StartChild(key=k, trial_id=k, name=k, tags={}, params={}, config_yaml="", spec_yaml="")

    q = OpQueue()
    parent = StartParent(experiment="e", name="p", tags={}, params={}, spec_yaml="")
    logs = [Log(key="a", metrics=[("x", 1.0, 1)]), Log(key="a", metrics=[("x", 2.0, 2)], tags={"t": "1"}),
            Log(key="b", metrics=[("x", 1.0, 1)])]
    for op in (parent, child("a"), child("b"), *logs, End(key="a", status="FINISHED"),
               Log(key="a", metrics=[("x", 3.0, 3)]), End(key="parent", status="FINISHED")):
        q.put(op)
    assert q.pending() == 9 and q.coalesced == 1  # a's two results joined

    first = q.next(timeout=0)
    assert first.ops == [parent] and q.next(timeout=0) is None  # a barrier: nothing passes it
    q.done(first)
    a, b = q.next(timeout=0), q.next(timeout=0)  # two lanes, two runs
    assert (a.ops, b.ops) == ([child("a")], [child("b")])
    assert q.next(timeout=0) is None  # each run's writes wait for its creation
    q.release(b)  # b's creation failed (a retry follows): still the first of b's
    assert q.next(timeout=0) is b
    q.done(a)
    la = q.next(timeout=0)
    assert la.ops == logs[:2] and la.coalesced
    q.put(Log(key="a", metrics=[("x", 9.0, 9)]))  # a batch being applied takes nothing more ...
    assert la.ops == logs[:2]  # ... it joins a's batch queued after a's end
    q.split(la)  # MLflow rejected the batch: its writes one by one, in order, a's first again
    assert q.next(timeout=0).ops == logs[:1]
    q.done(b)
    lb = q.next(timeout=0)
    assert lb.ops == logs[2:]
    q.done(lb)
    assert q.next(timeout=0) is None  # a's second write waits for its first, the parent's end for all
    # what is left comes back in order, for the spool
    left = q.stop()
    assert [(op.KIND, op.key) for op in left] == [("log", "a"), ("log", "a"), ("end", "a"), ("log", "a"),
                                                  ("log", "a"), ("end", "parent")]
    assert [op.metrics[0][1] for op in left if op.KIND == "log"] == [1.0, 2.0, 3.0, 9.0]


def test_every_operation_kind_survives_the_spool():
    """What the pending spool saves (``to_json`` through JSON) reads back as the same
    operation, for every kind the writer knows: a new kind without a sample here fails."""
    import json

    from kdtune.tracking import ops

    y = "a: 1\n"
    samples = [
        ops.StartParent(experiment="e", name="n", tags={"t": "1"}, params={"p": 1}, spec_yaml=y, resume=True),
        ops.RecordTeacher(name="t", tags={}, params={}, path="/x", metrics={"test_acc": 0.9}),
        ops.StartChild(key="k", trial_id="k", name="n", tags={}, params={}, config_yaml=y, spec_yaml=y),
        ops.Log(key="k", metrics=(("val_acc", 0.5, 1),), tags={"a": "b"}, ts=3),
        ops.Text(key="k", text="x", file="error.txt"),
        ops.Artifact(key="k", path="/x", dir="checkpoint", cleanup=True),
        ops.End(key="k", status="FINISHED"),
        ops.Settle(key="k", trial_id="k", name="n", child_tags={}, params={}, config_yaml=y, spec_yaml=y,
                   metrics=(("loss", 1.0, 2),), status="FAILED"),
        ops.Retire(key="parent", known=("a", "b")),
    ]
    assert {type(o).KIND for o in samples} == set(ops.KINDS)
    for o in samples:
        assert ops.from_json(json.loads(json.dumps(o.to_json()))) == o
