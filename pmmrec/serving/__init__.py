"""Serving over HTTP: `pmmrec serve`, a FastAPI application whose catalogue grows while it runs, durably.

Modules: `service` (catalogue, ranking, live items), `schemas` (request and response bodies), `app` (routes,
middleware), `runner` (building and running a server), `store` / `store_postgres` (durable live items),
`table_cache`, `batching`, `ann`, `images`, `metrics`, `merge` (live items into a new dataset folder).

Needs the optional dependencies of the `serve` extra (`pip install 'pmmrec[serve]'`).
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"pmmrec.serving needs the optional serving dependencies ({exc.name} is missing): pip install 'pmmrec[serve]'"
    ) from exc

from pmmrec.serving.ann import AnnConfig, AnnIndex
from pmmrec.serving.app import create_app
from pmmrec.serving.catalogue import Catalogue, CatalogueSnapshot
from pmmrec.serving.encoding import encode_item
from pmmrec.serving.limits import LIMITS, Limits, ServiceError
from pmmrec.serving.merge import merge_live_items
from pmmrec.serving.runner import ServeOptions, build_service, default_state_dir, load_service
from pmmrec.serving.server import serve
from pmmrec.serving.service import AddedItem, RecommenderService
from pmmrec.serving.store import ItemStore, LiveItem, SQLiteItemStore
from pmmrec.serving.stores import open_store

__all__ = [
    "LIMITS",
    "AddedItem",
    "AnnConfig",
    "AnnIndex",
    "Catalogue",
    "CatalogueSnapshot",
    "ItemStore",
    "Limits",
    "LiveItem",
    "RecommenderService",
    "SQLiteItemStore",
    "ServeOptions",
    "ServiceError",
    "build_service",
    "create_app",
    "default_state_dir",
    "encode_item",
    "load_service",
    "merge_live_items",
    "open_store",
    "serve",
]
