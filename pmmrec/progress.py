"""When pmmrec draws progress bars: only when they were asked for and stderr is a terminal.

A bar redraws itself many times a second; in a log file or a CI job each redraw is a new line (issue 26: 113 KB of
them in one demo log). So bars are off when their stream is not a terminal, unless PMMREC_PROGRESS=always; the
lines pmmrec prints between them (epochs, results) are written either way.
"""

from __future__ import annotations

import os

PROGRESS_ENV = "PMMREC_PROGRESS"


def bar_disable(wanted: bool) -> bool | None:
    """tqdm's `disable` for a bar: True when not wanted; None (tqdm: off unless its stream is a terminal) when
    wanted; False (always on) when PMMREC_PROGRESS=always."""
    if not wanted:
        return True
    if os.environ.get(PROGRESS_ENV, "").strip().lower() == "always":
        return False
    return None
