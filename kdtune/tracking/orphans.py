"""Runs a killed driver left behind that its restored experiment does not know.

Tune snapshots its experiment every so often; a driver killed between snapshots may already
have started trials (and their MLflow runs) that the last snapshot does not record. ``sweep run
--resume`` restores the snapshot, so Tune never resumes those trials: its restored searcher
suggests them again under new trial ids. Their old runs would stay RUNNING forever and count
twice, so on resume they are ended KILLED, tagged ``kdtune.orphaned`` with why, and moved to
MLflow's deleted runs: out of the sweep's ranking, and restorable
(``mlflow runs restore --run-id ...``) until ``mlflow gc``.
"""

from __future__ import annotations

from typing import Callable

from kdtune.tracking.client import _log_batch
from kdtune.tracking.query import child_runs
from kdtune.tracking.schema import ROLE, TRIAL, TRIAL_ID_TAG

ORPHAN_TAG = "kdtune.orphaned"
WHY = ("its driver was killed before Tune's snapshot recorded this trial; "
       "`sweep run --resume` ran the trial again under a new id")


def retire_orphans(c, exp_id: str | None, parent: str, known: Callable[[str], bool],
                   log: Callable[[str], None] = print) -> list[str]:
    """End and soft-delete the trial runs under ``parent`` whose trial id ``known`` refuses;
    their run ids. ``known`` is asked per run (it may read a set another thread adds to)."""
    gone = []
    # every page read before any deletion (deletions would shift the pages' offsets)
    for r in child_runs(c, exp_id, parent) if exp_id is not None else []:
        tid = r.data.tags.get(TRIAL_ID_TAG)
        if r.data.tags.get(ROLE) != TRIAL or not tid or known(tid):
            continue
        _log_batch(c, r.info.run_id, tags={ORPHAN_TAG: WHY})
        if r.info.status == "RUNNING":
            c.set_terminated(r.info.run_id, "KILLED")
        c.delete_run(r.info.run_id)
        gone.append(r.info.run_id)
    if gone:
        log(f"MLflow: {len(gone)} run(s) of trials the killed driver started after its last snapshot "
            "ended KILLED and deleted (run again; `mlflow runs restore` undoes it)")
    return gone

