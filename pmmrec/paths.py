"""Where pmmrec keeps derived data (token and prefix caches) that any layer may reuse between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where derived data (token caches, frozen-prefix caches) live: $PMMREC_CACHE, else $XDG_CACHE_HOME/pmmrec."""
    if os.environ.get("PMMREC_CACHE"):
        return Path(os.environ["PMMREC_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pmmrec"
