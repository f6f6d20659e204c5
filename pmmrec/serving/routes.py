"""The HTTP routes: three routers the application includes, each route getting what it uses by FastAPI dependency.

`reads` (ranking and the page's look-ups), `writes` (adding items) and `public` (health and metrics). A route asks
for the service (`ServiceDep`), its request limits (`LimitsDep`), the metrics (`MetricsDep`) or the threads that
add items (`AddThreadsDep`); `create_app` puts them on the application's state. The API key is the dependency
`require_key`: `create_app` adds it to `writes` when the server has a key, and to `reads` too with
`protect_reads`, so the OpenAPI spec names the key exactly where it is needed. The spec lists the operations in the
order this module declares them (`declared_order`), whichever router holds them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from pmmrec.serving.images import decode_base64
from pmmrec.serving.limits import Limits, ServiceError
from pmmrec.serving.metrics import ServerMetrics
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


class CompactJSON(JSONResponse):
    """JSON without spaces that survives any string (lone surrogates are written as escapes instead of failing)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )


# ---- dependencies: what routes use, from the application's state -----------------------------------------------------


async def _service(request: Request) -> RecommenderService:
    return request.app.state.service


async def _limits(request: Request) -> Limits:
    return request.app.state.service.limits


async def _metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


async def _add_threads(request: Request) -> ThreadPoolExecutor:
    return request.app.state.add_threads


ServiceDep = Annotated[RecommenderService, Depends(_service)]
LimitsDep = Annotated[Limits, Depends(_limits)]
MetricsDep = Annotated[ServerMetrics, Depends(_metrics)]
AddThreadsDep = Annotated[ThreadPoolExecutor, Depends(_add_threads)]

_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The server's API key.")


async def require_key(request: Request, given: str | None = Depends(_key_header)) -> None:
    """401 unless the request carries the server's API key (`X-API-Key`, or `Authorization: Bearer KEY`)."""
    expected: str | None = request.app.state.api_key
    if expected is None:
        return
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServiceError(401, f"this operation needs the server's API key in the {API_KEY_HEADER} header")


reads = APIRouter()
writes = APIRouter()
public = APIRouter()

# ---- public ----------------------------------------------------------------------------------------------------------


@public.get("/health", response_model=Health, summary="Model manifest, catalogue size and limits")
def health(service: ServiceDep) -> dict[str, Any]:
    return service.view.health()


# ---- reads: ranking --------------------------------------------------------------------------------------------------


@reads.post(
    "/recommend",
    response_model=RecommendResponse,
    responses=error_responses(400, 404, 413, 422),
    summary="Top-k items for a user id or a history of item ids (seen items excluded unless exclude_seen=false)",
)
async def recommend(request: RecommendRequest, service: ServiceDep) -> Response:
    # Awaited on the event loop (no request thread waits for the batch), and answered as JSON bytes: the service
    # builds the body in RecommendResponse's shape, so FastAPI's validation and serialisation of it (half of the
    # server's own time per request, docs/benchmarks.md) are skipped; the spec still names RecommendResponse.
    answer = await service.recommend_async(
        user_id=request.user_id, history=request.history, k=request.k, exclude_seen=request.exclude_seen
    )
    return CompactJSON(answer)


# ---- writes (declared between ranking and the look-ups: the spec lists routes in declaration order) ------------------


@writes.post(
    "/items",
    response_model=AddItemResponse,
    status_code=201,
    responses=error_responses(400, 409, 413, 422, 503),
    summary="Add an item from its content; stored, and rankable at once",
)
async def add_item(
    request: AddItemRequest, service: ServiceDep, limits: LimitsDep, metrics: MetricsDep, threads: AddThreadsDep
) -> dict[str, Any]:
    def add() -> dict[str, Any]:
        image = decode_base64(request.image_base64, limits) if request.image_base64 is not None else None
        return service.add_item(request.item_id, request.text, image)

    added = await asyncio.wrap_future(threads.submit(add))
    metrics.items_added.inc()
    return added


# ---- reads: look-ups -------------------------------------------------------------------------------------------------


@reads.get("/items", response_model=ItemList, responses=error_responses(422), summary="Search items by text")
def search_items(service: ServiceDep, q: ItemQuery = "", limit: ResultLimit = 20) -> dict[str, Any]:
    return {"items": service.view.search_items(q, limit)}


@reads.get("/items/{item_id:path}", response_model=ItemSummary, responses=error_responses(404, 422), summary="One item")
def get_item(item_id: ItemIdPath, service: ServiceDep) -> dict[str, Any]:
    return service.view.describe_item(item_id)


@reads.get(
    "/images/{item_id:path}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The item's image (PNG)"}, **error_responses(404, 422)},
    summary="An item's image",
)
def get_image(item_id: ItemIdPath, service: ServiceDep) -> Response:
    png = service.view.image_png(item_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@reads.get("/users", response_model=UserList, responses=error_responses(422), summary="User ids starting with a prefix")
def search_users(service: ServiceDep, q: UserQuery = "", limit: ResultLimit = 20) -> dict[str, Any]:
    users, total = service.view.search_users(q, limit)
    return {"users": users, "total": total}


@reads.get(
    "/users/{user_id:path}", response_model=UserHistory, responses=error_responses(404, 422), summary="A user's history"
)
def get_user(user_id: UserIdPath, service: ServiceDep, last: HistoryShown = 50) -> dict[str, Any]:
    return service.view.user_history(user_id, last)


# ---- public, continued -----------------------------------------------------------------------------------------------


@public.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics: requests and latency per endpoint, catalogue size, items added",
)
def prometheus_metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@public.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def declared_order() -> dict[tuple[str, str], int]:
    """(spec path, method) -> position of the route's declaration in this module: the order the spec lists them."""
    routes = [route for router in (public, reads, writes) for route in router.routes if isinstance(route, APIRoute)]
    routes.sort(key=lambda route: route.endpoint.__code__.co_firstlineno)
    order: dict[tuple[str, str], int] = {}
    for route in routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # /items/{item_id:path} -> /items/{item_id}
        for method in sorted(route.methods):
            order.setdefault((path, method.lower()), len(order))
    return order
