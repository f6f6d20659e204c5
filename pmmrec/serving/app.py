"""The FastAPI application: routes, error handling, body limit, optional API key, metrics, offline /docs.

`create_app` wraps a `RecommenderService`: OpenAPI at /openapi.json; Swagger UI at /docs from the assets shipped in
the `fastapi-offline` package, never a CDN (no ReDoc page: its bundle loads a logo from a CDN); the page at /;
Prometheus metrics at /metrics. Its lifespan closes the service when the server stops, after uvicorn has finished
the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pmmrec._version import __version__
from pmmrec.data import Dataset
from pmmrec.errors import PmmrecError
from pmmrec.model import PMMRec
from pmmrec.serving.body import JsonBodyCheck
from pmmrec.serving.images import decode_base64
from pmmrec.serving.limits import ServiceError
from pmmrec.serving.metrics import ServerMetrics
from pmmrec.serving.runner import build_service
from pmmrec.serving.schemas import (
    AddItemRequest,
    AddItemResponse,
    Health,
    HistoryShown,
    ItemIdPath,
    ItemList,
    ItemQuery,
    ItemSummary,
    RecommendRequest,
    RecommendResponse,
    ResultLimit,
    UserHistory,
    UserIdPath,
    UserList,
    UserQuery,
    error_responses,
)
from pmmrec.serving.service import RecommenderService

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"


def _docs_assets() -> Path:
    """The folder of Swagger UI and ReDoc bundles shipped by the fastapi-offline package (no CDN at run time)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


class _JSON(JSONResponse):
    """JSON that survives any string (lone surrogates are written as escapes instead of failing)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )


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
    reference: str | None = None,
    manifest: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    api_key: str | None = None,
    protect_reads: bool = False,
) -> FastAPI:
    """The FastAPI application over a model and a dataset (items encoded now), or over a ready service.

    With `api_key`, POST /items needs it in the `X-API-Key` header (or `Authorization: Bearer KEY`); with
    `protect_reads` too, every other route but /health and /metrics does as well.
    """
    if service is None:
        if model is None or dataset is None:
            raise PmmrecError("create_app needs a model and a dataset, or a service")
        service = build_service(
            model, dataset, device=device, progress=progress, manifest=manifest, reference=reference
        )
    limits = service.limits
    metrics = ServerMetrics(
        lambda: service.num_items,
        lambda: service.added_count,
        lambda: service.batcher.batches if service.batcher is not None else 0,
    )

    # Adds run on their own threads: one waiting for the catalogue lock (adds are encoded one at a time) or for the
    # item encoders must not hold a thread of the pool that serves reads, or a burst of adds stalls /recommend.
    adds = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pmmrec-add")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield  # uvicorn answers every request in flight, adds included, before the shutdown half runs
        service.close()  # uvicorn has finished the requests in flight by now

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
    app.state.metrics = metrics
    app.add_middleware(JsonBodyCheck)  # inside the size limit: it reads only bodies the limit let through
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(metrics.middleware)  # outermost: counts 413s of the body limit too

    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The server's API key.")

    def require_key(request: Request, given: str | None = Depends(header)) -> None:
        if api_key is None:
            return
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ServiceError(401, f"this operation needs the server's API key in the {API_KEY_HEADER} header")

    writes = [Depends(require_key)] if api_key is not None else []
    reads = writes if protect_reads else []
    auth_errors = (401,) if api_key is not None else ()
    read_errors = auth_errors if protect_reads else ()

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

    @app.get("/health", response_model=Health, summary="Model manifest, catalogue size and limits")
    def health() -> dict[str, Any]:
        return service.health()

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses=error_responses(400, *read_errors, 404, 413, 422),
        dependencies=reads,
        summary="Top-k items for a user id or a history of item ids (seen items excluded unless exclude_seen=false)",
    )
    def recommend(request: RecommendRequest) -> dict[str, Any]:
        batcher = service.batcher
        with batcher.expect() if batcher is not None else contextlib.nullcontext():
            return service.recommend(
                user_id=request.user_id, history=request.history, k=request.k, exclude_seen=request.exclude_seen
            )

    @app.post(
        "/items",
        response_model=AddItemResponse,
        status_code=201,
        responses=error_responses(400, *auth_errors, 409, 413, 422, 503),
        dependencies=writes,
        summary="Add an item from its content; stored, and rankable at once",
    )
    async def add_item(request: AddItemRequest) -> dict[str, Any]:
        def add() -> dict[str, Any]:
            image = decode_base64(request.image_base64, limits) if request.image_base64 is not None else None
            return service.add_item(request.item_id, request.text, image)

        added = await asyncio.wrap_future(adds.submit(add))
        metrics.items_added.inc()
        return added

    @app.get(
        "/items", response_model=ItemList, responses=error_responses(*read_errors, 422), dependencies=reads,
        summary="Search items by text",
    )  # fmt: skip
    def search_items(q: ItemQuery = "", limit: ResultLimit = 20) -> dict[str, Any]:
        return {"items": service.search_items(q, limit)}

    @app.get(
        "/items/{item_id:path}", response_model=ItemSummary, responses=error_responses(*read_errors, 404, 422),
        dependencies=reads, summary="One item",
    )  # fmt: skip
    def get_item(item_id: ItemIdPath) -> dict[str, Any]:
        return service.describe_item(item_id)

    @app.get(
        "/images/{item_id:path}",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The item's image (PNG)"},
            **error_responses(*read_errors, 404, 422),
        },
        dependencies=reads,
        summary="An item's image",
    )
    def get_image(item_id: ItemIdPath) -> Response:
        return Response(service.image_png(item_id), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get(
        "/users", response_model=UserList, responses=error_responses(*read_errors, 422), dependencies=reads,
        summary="User ids starting with a prefix",
    )  # fmt: skip
    def search_users(q: UserQuery = "", limit: ResultLimit = 20) -> dict[str, Any]:
        users, total = service.search_users(q, limit)
        return {"users": users, "total": total}

    @app.get(
        "/users/{user_id:path}", response_model=UserHistory, responses=error_responses(*read_errors, 404, 422),
        dependencies=reads, summary="A user's history",
    )  # fmt: skip
    def get_user(user_id: UserIdPath, last: HistoryShown = 50) -> dict[str, Any]:
        return service.user_history(user_id, last)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        summary="Prometheus metrics: requests and latency per endpoint, catalogue size, items added",
    )
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=_docs_assets()), name="docs-assets")
    return app
