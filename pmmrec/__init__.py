"""pmmrec: transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts."""

from __future__ import annotations

from typing import Any

from pmmrec._version import __version__

__all__ = ["PMMRec", "__version__", "load_component"]


def __getattr__(name: str) -> Any:
    # Lazy: `pmmrec --help` and `import pmmrec` stay fast; torch loads on first use.
    if name == "PMMRec":
        from pmmrec.model import PMMRec

        return PMMRec
    if name == "load_component":
        from pmmrec.components import load_component

        return load_component
    raise AttributeError(f"module 'pmmrec' has no attribute {name!r}")
