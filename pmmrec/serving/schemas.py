"""The HTTP API's request and response bodies (pydantic), and the parameter types of its routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pmmrec.serving.limits import LIMITS


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
