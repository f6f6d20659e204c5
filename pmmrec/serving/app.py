"""The FastAPI application: the routers of `routes`, error handling, body limit, optional API key, metrics, /docs.

`create_app` wraps a `RecommenderService`: OpenAPI at /openapi.json; Swagger UI at /docs from the assets shipped in
the `fastapi-offline` package, never a CDN (no ReDoc page: its bundle loads a logo from a CDN); the page at /;
Prometheus metrics at /metrics. Its lifespan closes the service when the server stops, after uvicorn has finished
the requests in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pmmrec._version import __version__
from pmmrec.data import Dataset
from pmmrec.errors import PmmrecError
from pmmrec.model import PMMRec
from pmmrec.serving import routes
from pmmrec.serving.body import JsonBodyCheck
from pmmrec.serving.connections import BalanceConnections, ConnectionBoard
from pmmrec.serving.limits import ServiceError
from pmmrec.serving.metrics import ServerMetrics
from pmmrec.serving.options import ServeOptions
from pmmrec.serving.routes import CompactJSON as _JSON
from pmmrec.serving.runner import build_service
from pmmrec.serving.service import RecommenderService


def _docs_assets() -> Path:
    """The folder of Swagger UI and ReDoc bundles shipped by the fastapi-offline package (no CDN at run time)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared or streamed (chunked), before parsing.

    The body is read here, up to the limit, and replayed to the application, so a chunked body over the limit
    is refused with 413 instead of surfacing as a parse error deep in the framework.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than {self.max_bytes:,} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit():
                    await _JSON({"detail": "invalid Content-Length header"}, status_code=400)(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    await _JSON({"detail": message}, status_code=413)(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            incoming = await receive()
            if incoming["type"] != "http.request":  # the client went away
                return
            chunk = incoming.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _JSON({"detail": message}, status_code=413)(scope, receive, send)
                return
            chunks.append(chunk)
            if not incoming.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    model: PMMRec | None = None,
    dataset: Dataset | None = None,
    *,
    service: RecommenderService | None = None,
    options: ServeOptions | None = None,
    reference: str | None = None,
    manifest: dict[str, Any] | None = None,
    api_key: str | None = None,
    connection_board: ConnectionBoard | None = None,
) -> FastAPI:
    """The FastAPI application over a model and a dataset (items encoded now, with `options`), or over a service.

    With `api_key`, POST /items needs it in the `X-API-Key` header (or `Authorization: Bearer KEY`); with the
    service's `options.protect_reads` too, every other route but /health and /metrics does as well. With
    `connection_board` (`pmmrec serve --processes`), connections are kept balanced over the processes on it.
    """
    if service is None:
        if model is None or dataset is None:
            raise PmmrecError("create_app needs a model and a dataset, or a service")
        service = build_service(model, dataset, options, manifest=manifest, reference=reference)
    running = service  # what the closures below read (never None)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield  # uvicorn answers every request in flight, adds included, before the shutdown half runs
        running.close()

    app = FastAPI(
        title="pmmrec recommendation server",
        version=__version__,
        description=(
            "ID-free sequential recommendation: items are represented by their content, so items added while the "
            "server runs (POST /items) are rankable at once, without retraining. A page to explore the model is at /."
        ),
        default_response_class=_JSON,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.api_key = api_key
    app.state.metrics = metrics = ServerMetrics(
        lambda: running.num_items,
        lambda: len(running.catalogue.added),
        lambda: running.batcher.batches if running.batcher is not None else 0,
    )
    # Adds run on their own threads: one waiting for the catalogue lock (adds are encoded one at a time) or for the
    # item encoders must not hold a thread of the pool that serves reads, or a burst of adds stalls /recommend.
    app.state.add_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pmmrec-add")
    app.add_middleware(JsonBodyCheck)  # inside the size limit: it reads only bodies the limit let through
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    app.add_middleware(metrics.middleware)  # counts 413s of the body limit too
    if connection_board is not None and service.options.balance_connections:
        app.add_middleware(BalanceConnections, board=connection_board)
    _add_error_handlers(app)
    keyed = [Depends(routes.require_key)] if api_key is not None else []
    unauthorised = routes.error_responses(401) if api_key is not None else {}
    protect = service.options.protect_reads
    app.include_router(routes.public)
    app.include_router(routes.reads, dependencies=keyed if protect else [], responses=unauthorised if protect else {})
    app.include_router(routes.writes, dependencies=keyed, responses=unauthorised)
    _add_docs(app)
    app.openapi = _spec_in_declared_order(app)  # type: ignore[method-assign]
    return app


def _spec_in_declared_order(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI spec with operations in the order `routes` declares them and responses by status code.

    FastAPI lists included routers one after another and a router's shared responses (the API key's 401) before
    the route's own; this keeps the spec as a single list of routes gives it.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            order = routes.declared_order()
            operations = sorted(
                ((path, method, operation) for path, item in spec["paths"].items() for method, operation in item.items()),
                key=lambda entry: order.get((entry[0], entry[1]), len(order)),
            )
            paths: dict[str, dict[str, Any]] = {}
            for path, method, operation in operations:
                operation["responses"] = dict(sorted(operation["responses"].items()))
                paths.setdefault(path, {})[method] = operation
            spec["paths"] = paths
        return app.openapi_schema  # type: ignore[return-value]

    return openapi


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as JSON `{"detail": ...}` naming what is wrong (validation errors with pydantic's list too)."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return _JSON({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = [
            {
                "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "invalid")),
            }
            for error in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg']}" for issue in issues)
        return _JSON({"detail": summary or "invalid request", "errors": issues}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _JSON({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the fastapi-offline assets, and the page's static files."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    app.mount("/static", StaticFiles(directory=routes.STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=_docs_assets()), name="docs-assets")
