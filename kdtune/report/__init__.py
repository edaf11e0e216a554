"""Plots and a self-contained HTML report of a sweep, built from plain per-trial data.

The sweep code turns its trials into ``TrialRecord``s; nothing here touches Ray, MLflow or a
running study, so a report can be made from a finished sweep's results alone.
"""

from __future__ import annotations

from kdtune.report.html import write_report
from kdtune.report.plots import make_plots, plotly_figures
from kdtune.report.records import TrialRecord, best_record, ranked, study_from_records

__all__ = [
    "TrialRecord",
    "best_record",
    "make_plots",
    "plotly_figures",
    "ranked",
    "study_from_records",
    "write_report",
]
