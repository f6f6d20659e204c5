"""The HTTP API: its request and response bodies, the parameter types of its routes, and the routes themselves, in
three routers the application includes, each route getting what it uses by FastAPI dependency.

A new endpoint is a route here (with its bodies, beside the others) and, when it does something new, the method
that does it: a read-only look-up on `CatalogueView` (view.py), an action on `RecommenderService` (service.py).
`create_app` includes the routers, so nothing registers a route.

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

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pmmrec.serving.images import decode_base64
from pmmrec.serving.limits import LIMITS, Limits, ServiceError
from pmmrec.serving.metrics import ServerMetrics
from pmmrec.serving.service import RecommenderService

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"

# ---- bodies and parameter types ----------------------------------------------------------------------------------------


def _well_formed(value: str) -> str:
    """Refuse strings holding lone UTF-16 surrogates (they cannot be encoded as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


ItemIdText = Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_chars), AfterValidator(_well_formed)]
ItemQuery = Annotated[str, Query(max_length=200, description="Case-insensitive text to find (or an exact item id).")]
UserQuery = Annotated[str, Query(max_length=200, description="Prefix of the user id.")]
ResultLimit = Annotated[int, Query(ge=1, le=LIMITS.max_results, description="How many results at most.")]
ItemIdPath = Annotated[str, PathParam(max_length=LIMITS.max_id_chars, description="An item id.")]
UserIdPath = Annotated[str, PathParam(max_length=LIMITS.max_id_chars, description="A user id.")]
HistoryShown = Annotated[int, Query(ge=1, le=LIMITS.max_history, description="Most recent items shown.")]


class RecommendRequest(BaseModel):
    """Exactly one of user_id (the user's whole sequence in the dataset) and history (item ids, oldest first)."""

    model_config = ConfigDict(extra="forbid")

    user_id: ItemIdText | None = Field(default=None, description="A user id of the dataset's users.tsv.")
    history: list[ItemIdText] | None = Field(
        default=None,
        min_length=1,
        max_length=LIMITS.max_history,
        description="Item ids, oldest first; the last max_length of them feed the user encoder.",
    )
    k: int = Field(default=10, ge=1, le=LIMITS.max_k, strict=True, description="How many items to return.")
    exclude_seen: bool = Field(
        default=True,
        strict=True,
        description="Never return items of the history (or the user's sequence); false keeps them rankable.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


class ItemSummary(BaseModel):
    """One catalogue item as the API shows it."""

    item_id: str = Field(description="The item's id.")
    text: str = Field(description="The item's text, as the text encoder reads it.")
    index: int = Field(description="Catalogue index (1-based; items added live come after the dataset's).")
    has_image: bool = Field(description="Whether GET /images/{item_id} has an image.")
    added: bool = Field(description="True for items added while a server ran (POST /items).")
    image_url: str | None = Field(description="Where the image is, or null.")


class RankedItem(BaseModel):
    """One recommended item."""

    rank: int = Field(description="1 for the best item.")
    item_id: str = Field(description="The item's id.")
    score: float = Field(description="Dot product of the user state and the item embedding.")
    text: str = Field(description="The item's text.")
    has_image: bool = Field(description="Whether GET /images/{item_id} has an image.")
    added: bool = Field(description="True for items added live.")
    image_url: str | None = Field(description="Where the image is, or null.")


class RecommendResponse(BaseModel):
    """The top-k items for a user or a history."""

    items: list[RankedItem] = Field(description="Best first.")
    k: int = Field(description="The k asked for (fewer items come back when fewer are eligible).")
    user_id: str | None = Field(description="The user ranked for, or null for a history.")
    history_length: int = Field(description="Items in the history used (the user's whole sequence for user_id).")
    catalogue_size: int = Field(description="Items in the catalogue that was ranked.")
    excluded: int = Field(description="Distinct items excluded because they were seen.")


class AddItemRequest(BaseModel):
    """A new item from its content."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemIdText = Field(description="A new id: no whitespace or control characters.")
    text: Annotated[str, Field(min_length=1, max_length=LIMITS.max_text_chars), AfterValidator(_well_formed)] = Field(
        description="The item's text (title, description), as the model's text encoder reads it."
    )
    image_base64: str | None = Field(
        default=None,
        description=(
            f"Optional image file (PNG, JPEG or WebP; at most {LIMITS.max_image_bytes:,} bytes, aspect ratio at most "
            f"{LIMITS.max_aspect_ratio}:1), base64-encoded; a data: URL is accepted. Required when the model has a "
            "vision encoder."
        ),
    )


class AddItemResponse(ItemSummary):
    """The added item, stored and rankable."""

    encoded_from: list[str] = Field(description="The modalities the model read to embed the item.")
    catalogue_size: int = Field(description="Items in the catalogue after the add.")


class ItemList(BaseModel):
    """Items found by a search."""

    items: list[ItemSummary] = Field(description="Exact id first, then titles starting with the query, then others.")


class UserList(BaseModel):
    """User ids found by a prefix."""

    users: list[str] = Field(description="Matching user ids, cut at the limit.")
    total: int = Field(description="How many user ids match (the list is cut at the limit).")


class UserHistory(BaseModel):
    """A dataset user's sequence."""

    user_id: str = Field(description="The user's id.")
    length: int = Field(description="Items in the user's whole sequence.")
    history: list[ItemSummary] = Field(description="The most recent items, oldest first.")


class Health(BaseModel):
    """What is served and how."""

    status: str = Field(description="'ok' once the catalogue is loaded.")
    pmmrec_version: str = Field(description="The pmmrec version of the server.")
    model: dict[str, Any] = Field(description="The reference served and its manifest (components, resolved commits).")
    dim: int = Field(description="Embedding width.")
    modalities: list[str] = Field(description="What the model reads of an item: text and/or image.")
    max_length: int = Field(description="History items the user encoder reads (the most recent ones).")
    dataset: str = Field(description="The dataset's name.")
    items: int = Field(description="Items in the catalogue, live ones included.")
    added_items: int = Field(description="Items added live (here or, through a shared store, by other replicas).")
    users: int = Field(description="Users of the dataset.")
    item_encoders: str = Field(
        description="'ready'; 'loading' while they load in the background at start-up (POST /items waits for them); "
        "'failed' (POST /items answers 503 saying why)."
    )
    can_add_items: bool = Field(description="Whether POST /items can embed new items with this model.")
    add_items_refusal: str | None = Field(description="Why not, when it cannot.")
    new_items_need_image: bool = Field(description="True when the model reads images (POST /items needs one).")
    limits: dict[str, int] = Field(description="The request limits.")
    store: str | None = Field(description="Where live items are kept (null: in memory only).")
    search: str = Field(description="'exact', or the approximate index in use.")
    batching: bool = Field(description="Whether concurrent /recommend requests are ranked together.")


class ValidationIssue(BaseModel):
    """One problem of an invalid request."""

    loc: list[str | int] = Field(description="Where: body, query or path, then the field.")
    msg: str = Field(description="What is wrong.")
    type: str = Field(description="pydantic's error type.")


class ErrorBody(BaseModel):
    """Every refusal."""

    detail: str = Field(description="One line naming the field or id at fault.")
    errors: list[ValidationIssue] | None = Field(default=None, description="Each problem of an invalid request.")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the refusals a route can answer."""
    descriptions = {
        400: "Unreadable request body (not UTF-8 JSON)",
        401: "Missing or wrong API key",
        404: "Unknown user or item id",
        409: "Duplicate item id, or a model that cannot take new items",
        413: "Request, text or image too large",
        422: "Invalid request (the message names the field)",
        503: "The item store could not be written (the item was not added)",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


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
