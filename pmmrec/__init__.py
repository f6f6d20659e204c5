"""pmmrec: transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
