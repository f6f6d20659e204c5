"""`pmmrec demo`: the transfer story on MovieLens-100K (run.py), its rows and settings (rows.py), and its report
with confidence intervals, paired tests and plots (report.py)."""

from __future__ import annotations

from pmmrec.demo.rows import DemoSettings, RowConfig, search_grid, settings_for
from pmmrec.demo.run import PUBLISHED_SLOTS, demo, prepare_output, published_repo, target_statistics

__all__ = [
    "PUBLISHED_SLOTS",
    "DemoSettings",
    "RowConfig",
    "demo",
    "prepare_output",
    "published_repo",
    "search_grid",
    "settings_for",
    "target_statistics",
]
