"""Serving over HTTP: `pmmrec serve`, a FastAPI application whose catalogue grows while it runs, durably.

Modules: `options` (every option of `pmmrec serve`: one pydantic model), `service` (ranking and adding items),
`catalogue` (the in-memory table and its live items), `view` (read-only look-ups and health), `live` (following
the item store), `routes` (the HTTP API: request and response bodies and the routes), `app` (the application:
middleware, errors, /docs), `runner` (building a service), `server` (running it), `store` / `store_postgres`
(durable live items), `state_dir` (the default state folder), `table_cache`, `batching`, `ann`, `images`,
`metrics`, `merge` (live items into a new dataset folder).

Needs the optional dependencies of the `serve` extra (`pip install 'pmmrec[serve]'`). The names below load on first
use, so `pmmrec.serving.options` (what the command line reads) imports neither torch nor FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module it lives in
    "LIMITS": "limits",
    "AddedItem": "catalogue",
    "AnnConfig": "options",
    "AnnIndex": "ann",
    "Catalogue": "catalogue",
    "CatalogueSnapshot": "catalogue",
    "CatalogueView": "view",
    "ItemStore": "store",
    "Limits": "limits",
    "LiveItem": "store",
    "RecommenderService": "service",
    "SQLiteItemStore": "store",
    "ServeOptions": "options",
    "ServiceError": "limits",
    "build_service": "runner",
    "create_app": "app",
    "default_state_dir": "state_dir",
    "encode_item": "encoding",
    "load_service": "runner",
    "merge_live_items": "merge",
    "open_store": "stores",
    "serve": "server",
}
__all__ = sorted(_HOMES)


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"pmmrec.serving needs the optional serving dependencies ({exc.name} is missing): pip install 'pmmrec[serve]'"
        ) from exc


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pmmrec.serving' has no attribute {name!r}")
    _require_serve_extra()
    value = getattr(importlib.import_module(f"pmmrec.serving.{home}"), name)
    globals()[name] = value
    return value
