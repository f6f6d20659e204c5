"""The recommendation server: one item-embedding matrix in memory, items added live from their content.

`RecommenderService` holds the catalogue (embedding table, ids, texts) and answers requests; `create_app` wraps it
in a FastAPI application (OpenAPI at /openapi.json, docs at /docs, a page at /); `serve` loads a model and a
dataset folder and runs the application with uvicorn.

Cost of a request: one user-encoder pass over the last `max_length` items of the history and one vector-matrix
product with the item table. Adding an item costs one item-encoder pass; its column is appended under a lock and a
new snapshot (table view, item count) is published, so a request in flight keeps ranking the snapshot it took.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import socket
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pmmrec._version import __version__
from pmmrec.data import Dataset, ImageStore, resize_and_center_crop
from pmmrec.data.dataset import validate_identifier, validate_text
from pmmrec.errors import ConfigError, DatasetError, PmmrecError
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """Request limits; a request beyond one gets a 4xx answer that names the limit."""

    max_k: int = 1000
    max_history: int = 1000  # items in a request's history (only the last max_length feed the user encoder)
    max_id_chars: int = 511
    max_text_chars: int = 2000
    max_image_bytes: int = 5 * 1024 * 1024  # decoded image file
    max_image_pixels: int = 40_000_000  # width x height, checked before decoding
    max_body_bytes: int = 8 * 1024 * 1024  # whole request body (a base64 image is 4/3 of its bytes)
    max_results: int = 100  # search listings
    display_image_size: int = 224  # side of the square image kept for the page of an added item


LIMITS = Limits()


class ServiceError(Exception):
    """A request the service refuses: HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CatalogueSnapshot:
    """What one request ranks: item embeddings 0..count as columns [d, count + 1] (column 0 = padding), the count.

    The table is kept column-major (one column per item) because a vector times a [d, N] matrix runs about three
    times faster on CPU than a [N, d] matrix times a vector. The id and text lists are append-only and shared
    between snapshots; entries 0..count-1 never change.
    """

    columns: torch.Tensor
    count: int

    @property
    def table(self) -> torch.Tensor:
        """The item table [count + 1, d] (a view; row 0 = padding)."""
        return self.columns.T


@dataclass
class AddedItem:
    """An item added while the server runs."""

    item_id: str
    index: int
    text: str
    has_image: bool
    encoded_from: list[str] = field(default_factory=list)


def _well_formed(value: str) -> str:
    """Refuse strings holding lone UTF-16 surrogates (they cannot be encoded as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


def model_manifest(model: PMMRec) -> dict[str, Any]:
    """The manifest of a model built in memory: each component's type and where it came from (no weight hashes)."""
    components = {}
    for slot, component in model.components().items():
        source = model.sources.get(slot)
        components[slot] = {
            "type": component.type_name,
            "requested": source.requested if source else None,
            "resolved_commit": source.resolved_commit if source else None,
            "created": source.created if source else True,
        }
    return {
        "pmmrec_type": "model/pmmrec",
        "dim": model.dim,
        "modalities": sorted(model.modalities),
        "components": components,
    }


class RecommenderService:
    """The catalogue table, ids, texts and user histories of one model, and the operations the API exposes."""

    def __init__(
        self,
        model: PMMRec,
        item_ids: list[str],
        item_texts: list[str],
        item_table: torch.Tensor,
        *,
        users: dict[str, np.ndarray] | None = None,
        image_store: ImageStore | None = None,
        items_without_images: set[str] | None = None,
        dataset_name: str = "catalogue",
        manifest: dict[str, Any] | None = None,
        reference: str | None = None,
        limits: Limits = LIMITS,
        spare_items: int = 1024,
        max_parallel: int | None = None,
    ) -> None:
        if len(item_ids) != len(item_texts):
            raise PmmrecError(f"{len(item_ids)} item ids but {len(item_texts)} texts")
        if item_table.ndim != 2 or item_table.shape[0] != len(item_ids) + 1 or item_table.shape[1] != model.dim:
            raise PmmrecError(
                f"item table has shape {tuple(item_table.shape)}, expected ({len(item_ids) + 1}, {model.dim}) "
                "(one row per item plus the padding row 0)"
            )
        model.eval()
        self.model = model
        self.limits = limits
        self.dataset_name = dataset_name
        self.manifest = manifest if manifest is not None else model_manifest(model)
        self.reference = reference
        self.users = users or {}
        self._user_ids = list(self.users)
        self.image_store = image_store
        self._items_without_images = items_without_images or set()
        self.device = item_table.device
        count = len(item_ids)
        buffer = torch.empty(item_table.shape[1], count + 1 + spare_items, dtype=torch.float32, device=self.device)
        buffer[:, : count + 1] = item_table.T.float()
        buffer[:, 0] = 0.0
        self._buffer = buffer  # [d, capacity]: columns past the published count are free space for appends
        self._ids: list[str] = list(item_ids)
        self._texts: list[str] = list(item_texts)
        self._lower: list[str] = [text.lower() for text in item_texts]
        self._index: dict[str, int] = {item_id: position + 1 for position, item_id in enumerate(item_ids)}
        if len(self._index) != count:
            raise PmmrecError("item ids are not unique")
        self._added: dict[str, AddedItem] = {}
        self._added_images: dict[str, bytes] = {}
        self._lock = threading.Lock()  # one append (encode + publish) at a time; readers never wait
        # Rankings computed at once; more would only time-slice the same cores (and thrash the cache).
        self._compute = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 1)
        self._snapshot = CatalogueSnapshot(columns=buffer[:, : count + 1], count=count)

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_dataset(
        cls,
        model: PMMRec,
        dataset: Dataset,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
        progress: bool = False,
        manifest: dict[str, Any] | None = None,
        reference: str | None = None,
        limits: Limits = LIMITS,
        max_parallel: int | None = None,
    ) -> RecommenderService:
        """Encode every catalogue item once (batched) and keep the table; users keep their full sequences."""
        device = torch.device(device)
        model.to(device)
        collator = make_collator(model, dataset)
        table = encode_catalogue(model, collator, dataset.num_items, device, batch_size=batch_size, progress=progress)
        return cls(
            model,
            list(dataset.item_ids),
            list(dataset.item_texts),
            table,
            users={
                user: np.asarray(seq, dtype=np.int64)
                for user, seq in zip(dataset.user_ids, dataset.sequences, strict=True)
            },
            image_store=dataset.image_store(),
            items_without_images=set(dataset.info.get("items_without_images", [])),
            dataset_name=dataset.name,
            manifest=manifest,
            reference=reference,
            limits=limits,
            max_parallel=max_parallel,
        )

    # ---- state -----------------------------------------------------------------------------------

    def snapshot(self) -> CatalogueSnapshot:
        """The current catalogue; stays valid (and unchanged) while items are added."""
        return self._snapshot

    @property
    def num_items(self) -> int:
        return self._snapshot.count

    @property
    def item_ids(self) -> list[str]:
        """The catalogue's item ids (catalogue index i -> item_ids[i - 1]), a copy."""
        return self._ids[: self._snapshot.count]

    @property
    def item_texts(self) -> list[str]:
        """The catalogue's item texts, a copy."""
        return self._texts[: self._snapshot.count]

    @property
    def add_refusal(self) -> str | None:
        """Why this model cannot take new items, or None when it can."""
        if self.model.item_tower is not None:
            return (
                f"this model has an ID item tower ({self.model.item_tower.type_name}): it can only score the items "
                "it was trained on; adding items by content needs a content model (text and/or vision encoder)"
            )
        return None

    @property
    def needs_image(self) -> bool:
        """True when new items must come with an image (the model has a vision encoder)."""
        return self.model.vision is not None

    def _has_image(self, item_id: str) -> bool:
        if item_id in self._added:
            return item_id in self._added_images
        return self.image_store is not None and item_id not in self._items_without_images

    def _lookup(self, item_id: str, snapshot: CatalogueSnapshot) -> int | None:
        index = self._index.get(item_id)
        return index if index is not None and index <= snapshot.count else None

    def describe_item(self, item_id: str) -> dict[str, Any]:
        """Id, text, catalogue index, image availability and whether it was added live."""
        index = self._lookup(item_id, self._snapshot)
        if index is None:
            raise ServiceError(404, f"unknown item id {item_id!r}")
        return self._summary(index)

    def _summary(self, index: int) -> dict[str, Any]:
        item_id = self._ids[index - 1]
        has_image = self._has_image(item_id)
        return {
            "item_id": item_id,
            "text": self._texts[index - 1],
            "index": index,
            "has_image": has_image,
            "added": item_id in self._added,
            "image_url": _image_url(item_id) if has_image else None,
        }

    # ---- reading -----------------------------------------------------------------------------------

    def recommend(
        self,
        *,
        user_id: str | None = None,
        history: list[str] | None = None,
        k: int = 10,
        exclude_seen: bool = False,
    ) -> dict[str, Any]:
        """Top-k items for a known user (their whole sequence) or a history of item ids (oldest first)."""
        if (user_id is None) == (history is None):
            raise ServiceError(422, "give exactly one of user_id and history")
        if not 1 <= k <= self.limits.max_k:
            raise ServiceError(422, f"k must be between 1 and {self.limits.max_k}, got {k}")
        snapshot = self._snapshot
        if user_id is not None:
            sequence = self.users.get(user_id)
            if sequence is None:
                raise ServiceError(404, f"unknown user id {user_id!r}")
            indices = [int(i) for i in sequence]
        else:
            assert history is not None
            if not history:
                raise ServiceError(422, "history is empty: give at least one item id")
            if len(history) > self.limits.max_history:
                raise ServiceError(
                    422, f"history has {len(history)} items; at most {self.limits.max_history} are accepted"
                )
            looked_up = [(item, self._lookup(item, snapshot)) for item in history]
            unknown = list(dict.fromkeys(item for item, index in looked_up if index is None))
            if unknown:
                shown = ", ".join(repr(item) for item in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise ServiceError(404, f"unknown item ids in history: {shown}")
            indices = [index for _, index in looked_up if index is not None]
        exclude = sorted(set(indices)) if exclude_seen else []
        with self._compute:
            ranked = self._rank(snapshot, indices, k, exclude)
        items = []
        for rank, (index, score) in enumerate(ranked, start=1):
            item_id = self._ids[index - 1]
            has_image = self._has_image(item_id)
            items.append(
                {
                    "rank": rank,
                    "item_id": item_id,
                    "score": score,
                    "text": self._texts[index - 1],
                    "has_image": has_image,
                    "added": item_id in self._added,
                    "image_url": _image_url(item_id) if has_image else None,
                }
            )
        return {
            "items": items,
            "k": k,
            "user_id": user_id,
            "history_length": len(indices),
            "catalogue_size": snapshot.count,
            "excluded": len(exclude),
        }

    @torch.inference_mode()
    def _rank(
        self, snapshot: CatalogueSnapshot, history: list[int], k: int, exclude: list[int]
    ) -> list[tuple[int, float]]:
        """(catalogue index, score) of the top k: one user-encoder pass, one vector-matrix product, one top-k.

        The same computation as `pmmrec.inference.top_k` (the state after the last max_length items of the
        history, scored against every item); only the table layout differs.
        """
        columns = snapshot.columns
        window = torch.tensor(history[-self.model.max_length :], dtype=torch.long, device=columns.device)
        embeddings = columns[:, window].T.unsqueeze(0)  # [1, S, d]
        mask = torch.ones(1, window.shape[0], dtype=torch.bool, device=columns.device)
        state = self.model.encode_users(embeddings, mask)[0, -1].float()
        scores = state @ columns  # [count + 1]
        scores[0] = float("-inf")
        if exclude:
            scores[torch.tensor(exclude, dtype=torch.long, device=scores.device)] = float("-inf")
        count = min(k, snapshot.count - len(exclude))
        if count <= 0:
            return []
        values, indices = torch.topk(scores, count)
        return list(zip(indices.tolist(), values.tolist(), strict=True))

    def search_items(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose text contains `query` (case-insensitive), those starting with it first; an exact id first."""
        snapshot = self._snapshot
        needle = query.strip().lower()
        limit = max(1, min(limit, self.limits.max_results))
        exact = self._lookup(query.strip(), snapshot)
        found: list[int] = [exact] if exact is not None else []
        if needle:
            texts = self._lower[: snapshot.count]
            starting = [i + 1 for i, text in enumerate(texts) if text.startswith(needle)]
            containing = [i + 1 for i, text in enumerate(texts) if needle in text and not text.startswith(needle)]
            # Newest first within each group, so live-added items are easy to find.
            found += [i for i in reversed(starting) if i != exact] + [i for i in reversed(containing) if i != exact]
        return [self._summary(index) for index in found[:limit]]

    def search_users(self, prefix: str = "", limit: int = 20) -> tuple[list[str], int]:
        """User ids starting with `prefix` (at most `limit`) and how many match."""
        limit = max(1, min(limit, self.limits.max_results))
        matches = [user for user in self._user_ids if user.startswith(prefix)] if prefix else self._user_ids
        return matches[:limit], len(matches)

    def user_history(self, user_id: str, last: int = 50) -> dict[str, Any]:
        """A user's sequence length and their most recent items (oldest first)."""
        sequence = self.users.get(user_id)
        if sequence is None:
            raise ServiceError(404, f"unknown user id {user_id!r}")
        last = max(1, min(last, self.limits.max_history))
        return {
            "user_id": user_id,
            "length": len(sequence),
            "history": [self._summary(int(index)) for index in sequence[-last:]],
        }

    def image_png(self, item_id: str) -> bytes:
        """The item's image as PNG bytes; 404 when the item is unknown or has none."""
        if self._lookup(item_id, self._snapshot) is None:
            raise ServiceError(404, f"unknown item id {item_id!r}")
        if item_id in self._added:
            png = self._added_images.get(item_id)
            if png is None:
                raise ServiceError(404, f"item {item_id!r} has no image")
            return png
        if self.image_store is None or item_id in self._items_without_images:
            raise ServiceError(404, f"item {item_id!r} has no image")
        try:
            pixels = self.image_store.get(item_id)
        except DatasetError as exc:
            raise ServiceError(404, f"item {item_id!r}: stored image is unreadable ({exc})") from None
        if pixels is None:
            raise ServiceError(404, f"item {item_id!r} has no image")
        return _png(pixels)

    def health(self) -> dict[str, Any]:
        """Model manifest (component references, resolved commits), catalogue size and limits."""
        snapshot = self._snapshot
        return {
            "status": "ok",
            "pmmrec_version": __version__,
            "model": {"reference": self.reference, "manifest": self.manifest},
            "dim": self.model.dim,
            "modalities": sorted(self.model.modalities),
            "max_length": self.model.max_length,
            "dataset": self.dataset_name,
            "items": snapshot.count,
            "added_items": len(self._added),
            "users": len(self._user_ids),
            "can_add_items": self.add_refusal is None,
            "add_items_refusal": self.add_refusal,
            "new_items_need_image": self.needs_image,
            "limits": asdict(self.limits),
        }

    # ---- writing -----------------------------------------------------------------------------------

    def add_item(self, item_id: str, text: str, image: bytes | None = None) -> dict[str, Any]:
        """Encode an item from its content and make it rankable at once; 409 for a duplicate id or an ID model."""
        refusal = self.add_refusal
        if refusal is not None:
            raise ServiceError(409, f"cannot add items: {refusal}")
        try:
            validate_identifier(item_id, "item_id", "item_id")
            validate_text(text, "text")
        except DatasetError as exc:
            raise ServiceError(422, str(exc)) from None
        text = text.strip()
        if len(text) > self.limits.max_text_chars:
            raise ServiceError(422, f"text has {len(text)} characters; at most {self.limits.max_text_chars}")
        if item_id in self._index:
            raise ServiceError(409, f"item id {item_id!r} already exists")
        picture = self._decode_image(image) if image is not None else None
        if self.needs_image and picture is None:
            raise ServiceError(
                422,
                f"this model reads images ({self.model.vision.type_name}): a new item needs image_base64 "  # type: ignore[union-attr]
                "(a PNG, JPEG or WebP file, base64-encoded)",
            )
        display = None
        if picture is not None:
            display = _png(np.asarray(resize_and_center_crop(picture, self.limits.display_image_size), dtype=np.uint8))
        with self._lock:
            if item_id in self._index:
                raise ServiceError(409, f"item id {item_id!r} already exists")
            vector, used = self._encode(text, picture)
            index = self._append(item_id, text, vector)
            self._added[item_id] = AddedItem(item_id, index, text, picture is not None, used)
            if display is not None:
                self._added_images[item_id] = display
        return self._summary(index) | {"encoded_from": used, "catalogue_size": index}

    def _decode_image(self, data: bytes) -> Image.Image:
        limits = self.limits
        if len(data) > limits.max_image_bytes:
            raise ServiceError(
                413, f"image has {len(data):,} bytes: over the limit of {limits.max_image_bytes:,} bytes"
            )
        if not data:
            raise ServiceError(422, "image_base64 is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                picture = Image.open(io.BytesIO(data))
                width, height = picture.size
                if width * height > limits.max_image_pixels:
                    raise ServiceError(
                        413, f"image is {width}x{height} pixels; at most {limits.max_image_pixels:,} pixels"
                    )
                if picture.format not in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
                    raise ServiceError(422, f"image format {picture.format} is not accepted (PNG, JPEG, WebP)")
                picture.load()
                return ImageOps.exif_transpose(picture).convert("RGB")
        except ServiceError:
            raise
        except UnidentifiedImageError:
            raise ServiceError(422, "image_base64: not a recognised image file (PNG, JPEG or WebP)") from None
        except Exception as exc:  # any decoder failure means the upload is unusable
            raise ServiceError(422, f"image_base64: undecodable image ({type(exc).__name__}: {exc})") from None

    @torch.inference_mode()
    def _encode(self, text: str, picture: Image.Image | None) -> tuple[torch.Tensor, list[str]]:
        """One item's embedding [d] from the model's own encoders; the modalities it read."""
        model = self.model
        text_ids = text_mask = pixel_values = None
        used = []
        if model.text is not None:
            text_ids, text_mask = model.text.tokenize([text])
            text_ids, text_mask = text_ids.to(self.device), text_mask.to(self.device)
            used.append("text")
        if model.vision is not None:
            assert picture is not None
            side = model.vision.image_size
            pixels = np.array(resize_and_center_crop(picture, side), dtype=np.uint8)
            pixel_values = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous().to(self.device)
            used.append("image")
        encoded = model.embed_items(text_ids, text_mask, pixel_values)
        vector = encoded.embeddings[0].float()
        if not bool(torch.isfinite(vector).all()):
            raise ServiceError(422, "the model produced a non-finite embedding for this item")
        return vector, used

    def _append(self, item_id: str, text: str, vector: torch.Tensor) -> int:
        """Write the column past the published count, then publish the new snapshot (caller holds the lock)."""
        count = self._snapshot.count
        buffer = self._buffer
        if count + 2 > buffer.shape[1]:
            capacity = max(2 * buffer.shape[1], count + 2)
            grown = torch.empty(buffer.shape[0], capacity, dtype=buffer.dtype, device=buffer.device)
            grown[:, : count + 1] = buffer[:, : count + 1]
            buffer = self._buffer = grown
        buffer[:, count + 1] = vector
        self._ids.append(item_id)
        self._texts.append(text)
        self._lower.append(text.lower())
        self._index[item_id] = count + 1
        self._snapshot = CatalogueSnapshot(columns=buffer[:, : count + 2], count=count + 1)
        return count + 1


def _image_url(item_id: str) -> str:
    return "/images/" + quote(item_id, safe="")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# ---- HTTP layer -------------------------------------------------------------------------------------

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

    user_id: (
        Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_chars), AfterValidator(_well_formed)] | None
    ) = Field(default=None, description="A user id of the dataset's users.tsv.")
    history: list[ItemIdText] | None = Field(
        default=None,
        min_length=1,
        max_length=LIMITS.max_history,
        description="Item ids, oldest first; the last max_length of them feed the user encoder.",
    )
    k: int = Field(default=10, ge=1, le=LIMITS.max_k, description="How many items to return.")
    exclude_seen: bool = Field(default=False, description="Never return items of the history (or the user's sequence).")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id and history")
        return self


class ItemSummary(BaseModel):
    item_id: str
    text: str
    index: int = Field(description="Catalogue index (1-based; items added live come after the dataset's).")
    has_image: bool
    added: bool = Field(description="True for items added while the server runs.")
    image_url: str | None


class RankedItem(BaseModel):
    rank: int
    item_id: str
    score: float
    text: str
    has_image: bool
    added: bool
    image_url: str | None


class RecommendResponse(BaseModel):
    items: list[RankedItem]
    k: int
    user_id: str | None
    history_length: int = Field(description="Items in the history used (the user's whole sequence for user_id).")
    catalogue_size: int
    excluded: int = Field(description="Distinct items excluded because they were seen.")


class AddItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: ItemIdText = Field(description="A new id: no whitespace or control characters.")
    text: Annotated[str, Field(min_length=1, max_length=LIMITS.max_text_chars), AfterValidator(_well_formed)] = Field(
        description="The item's text (title, description), as the model's text encoder reads it."
    )
    image_base64: str | None = Field(
        default=None,
        description=(
            f"Optional image file (PNG, JPEG or WebP; at most {LIMITS.max_image_bytes:,} bytes), base64-encoded; "
            "a data: URL is accepted. Required when the model has a vision encoder."
        ),
    )


class AddItemResponse(ItemSummary):
    encoded_from: list[str] = Field(description="The modalities the model read to embed the item.")
    catalogue_size: int


class ItemList(BaseModel):
    items: list[ItemSummary]


class UserList(BaseModel):
    users: list[str]
    total: int = Field(description="How many user ids match (the list is cut at the limit).")


class UserHistory(BaseModel):
    user_id: str
    length: int
    history: list[ItemSummary] = Field(description="The most recent items, oldest first.")


class Health(BaseModel):
    status: str
    pmmrec_version: str
    model: dict[str, Any] = Field(description="The reference served and its manifest (components, resolved commits).")
    dim: int
    modalities: list[str]
    max_length: int
    dataset: str
    items: int
    added_items: int
    users: int
    can_add_items: bool
    add_items_refusal: str | None
    new_items_need_image: bool
    limits: dict[str, int]


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ValidationIssue] | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Unreadable request body (not UTF-8 JSON)",
        404: "Unknown user or item id",
        409: "Duplicate item id, or a model that cannot take new items",
        413: "Request, text or image too large",
        422: "Invalid request (the message names the field)",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


class _JSON(JSONResponse):
    """JSON that survives any string (lone surrogates are written as escapes instead of failing)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes` (declared or streamed), before it is parsed."""

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
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return incoming

        async def tracking_send(outgoing: dict[str, Any]) -> None:
            nonlocal started
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _JSON({"detail": message}, status_code=413)(scope, receive, send)


def _decode_base64(value: str, limits: Limits) -> bytes:
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    if len(value) > (limits.max_image_bytes + 2) // 3 * 4 + 8:
        raise ServiceError(
            413,
            f"image_base64 has {len(value):,} characters: the image is over the limit of {limits.max_image_bytes:,} bytes",
        )
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(422, f"image_base64: not valid base64 ({exc})") from None


def create_app(
    model: PMMRec | None = None,
    dataset: Dataset | None = None,
    *,
    service: RecommenderService | None = None,
    reference: str | None = None,
    manifest: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> FastAPI:
    """The FastAPI application over a model and a dataset (items encoded now), or over a ready service."""
    if service is None:
        if model is None or dataset is None:
            raise PmmrecError("create_app needs a model and a dataset, or a service")
        service = RecommenderService.from_dataset(
            model, dataset, device=device, progress=progress, manifest=manifest, reference=reference
        )
    limits = service.limits
    app = FastAPI(
        title="pmmrec recommendation server",
        version=__version__,
        description=(
            "ID-free sequential recommendation: items are represented by their content, so items added while the "
            "server runs (POST /items) are rankable at once, without retraining. A page to explore the model is at /."
        ),
        default_response_class=_JSON,
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _JSON({"detail": exc.message}, status_code=exc.status)

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
        responses=_errors(400, 404, 413, 422),
        summary="Top-k items for a user id or a history of item ids",
    )
    def recommend(request: RecommendRequest) -> dict[str, Any]:
        return service.recommend(
            user_id=request.user_id, history=request.history, k=request.k, exclude_seen=request.exclude_seen
        )

    @app.post(
        "/items",
        response_model=AddItemResponse,
        status_code=201,
        responses=_errors(400, 409, 413, 422),
        summary="Add an item from its content; rankable at once",
    )
    def add_item(request: AddItemRequest) -> dict[str, Any]:
        image = _decode_base64(request.image_base64, limits) if request.image_base64 is not None else None
        return service.add_item(request.item_id, request.text, image)

    @app.get("/items", response_model=ItemList, responses=_errors(422), summary="Search items by text")
    def search_items(
        q: ItemQuery = "",
        limit: ResultLimit = 20,
    ) -> dict[str, Any]:
        return {"items": service.search_items(q, limit)}

    @app.get("/items/{item_id:path}", response_model=ItemSummary, responses=_errors(404, 422), summary="One item")
    def get_item(item_id: ItemIdPath) -> dict[str, Any]:
        return service.describe_item(item_id)

    @app.get(
        "/images/{item_id:path}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The item's image (PNG)"}, **_errors(404, 422)},
        summary="An item's image",
    )
    def get_image(item_id: ItemIdPath) -> Response:
        return Response(service.image_png(item_id), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/users", response_model=UserList, responses=_errors(422), summary="User ids starting with a prefix")
    def search_users(
        q: UserQuery = "",
        limit: ResultLimit = 20,
    ) -> dict[str, Any]:
        users, total = service.search_users(q, limit)
        return {"users": users, "total": total}

    @app.get(
        "/users/{user_id:path}", response_model=UserHistory, responses=_errors(404, 422), summary="A user's history"
    )
    def get_user(
        user_id: UserIdPath,
        last: HistoryShown = 50,
    ) -> dict[str, Any]:
        return service.user_history(user_id, last)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ---- running ----------------------------------------------------------------------------------------


def load_service(
    model_ref: str,
    data_dir: str | Path,
    *,
    device: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    max_parallel: int | None = None,
) -> RecommenderService:
    """Load an assembled model (folder or hub reference) and a dataset folder; encode the catalogue."""
    from pmmrec.data import load_dataset
    from pmmrec.model import read_manifest
    from pmmrec.references import resolve_reference

    resolved = resolve_reference(str(model_ref))
    manifest = read_manifest(resolved.path)
    if resolved.commit is not None:
        manifest = manifest | {"resolved_commit": resolved.commit}
    model = PMMRec.from_pretrained(resolved.path)
    dataset = load_dataset(data_dir)
    return RecommenderService.from_dataset(
        model,
        dataset,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        batch_size=batch_size,
        progress=progress,
        manifest=manifest,
        reference=str(model_ref),
        max_parallel=max_parallel,
    )


def serve(
    model_ref: str,
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    access_log: bool = True,
    threads: int = 1,
) -> None:
    """Encode the catalogue (all cores), then serve the API and the page with uvicorn until interrupted.

    Each request runs on `threads` torch threads: with the default 1, concurrent requests run in parallel on
    separate cores, and a busy machine does not stall a request on a descheduled OpenMP peer thread.
    """
    import uvicorn

    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    try:  # before the (long) catalogue encoding: is the address free?
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from None
    service = load_service(model_ref, data_dir, device=device, batch_size=batch_size, progress=progress)
    torch.set_num_threads(threads)
    app = create_app(service=service)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
