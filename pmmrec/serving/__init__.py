"""Serving over HTTP: `pmmrec serve`, a FastAPI application whose catalogue grows while it runs.

Needs the optional dependencies of the `serve` extra (`pip install 'pmmrec[serve]'`).
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"pmmrec.serving needs the optional serving dependencies ({exc.name} is missing): pip install 'pmmrec[serve]'"
    ) from exc

from pmmrec.serving.app import (
    LIMITS,
    AddedItem,
    CatalogueSnapshot,
    Limits,
    RecommenderService,
    ServiceError,
    create_app,
    load_service,
    serve,
)

__all__ = [
    "LIMITS",
    "AddedItem",
    "CatalogueSnapshot",
    "Limits",
    "RecommenderService",
    "ServiceError",
    "create_app",
    "load_service",
    "serve",
]
