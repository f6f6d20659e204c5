"""The recommendation service: the catalogue, ranking, and items added live (kept durably when a store is given).

Cost of a request: its share of one user-encoder pass and one matrix multiply with the item table (requests that
wait together are ranked in one batch, see `batching`). Adding an item costs one item-encoder pass and, with a
store, one committed write before the item is published; a request in flight keeps ranking the snapshot it took.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from pmmrec.data import ImageStore
from pmmrec.data.dataset import validate_identifier, validate_text
from pmmrec.errors import DatasetError, PmmrecError
from pmmrec.fileio import WriteError
from pmmrec.model import PMMRec
from pmmrec.serving import queries
from pmmrec.serving.ann import AnnConfig, AnnIndex
from pmmrec.serving.batching import MicroBatcher, Ranked, RankQuery, rank_queries
from pmmrec.serving.catalogue import Catalogue, CatalogueSnapshot
from pmmrec.serving.encoding import encode_item
from pmmrec.serving.images import decode_image, square_pixels, to_png
from pmmrec.serving.limits import LIMITS, Limits, ServiceError
from pmmrec.serving.live import LiveItemsFollower
from pmmrec.serving.served_model import ServedModel
from pmmrec.serving.store import DuplicateItem, ItemStore

log = logging.getLogger("pmmrec.serving")


@dataclass
class AddedItem:
    """An item added while a server runs (here or, through a shared store, by another replica)."""

    item_id: str
    index: int
    text: str
    has_image: bool
    encoded_from: list[str] = field(default_factory=list)


class RecommenderService(LiveItemsFollower):
    """The catalogue table, ids, texts and user histories of one model, and the operations the API exposes."""

    def __init__(
        self,
        model: PMMRec | ServedModel,
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
        batching: bool = True,
        max_batch: int = 64,
        batch_wait_ms: float = 2.0,
        batch_workers: int = 2,
        ann: AnnIndex | None = None,
    ) -> None:
        self.served = ServedModel.of(model)
        if item_table.ndim != 2 or item_table.shape[1] != self.served.dim:
            raise PmmrecError(f"item table has shape {tuple(item_table.shape)}, expected (items + 1, {self.served.dim})")
        self.limits = limits
        self.dataset_name = dataset_name
        if manifest is None:
            manifest = self.served.manifest or queries.model_manifest(self.served.model())
        self.manifest = manifest
        self.reference = reference
        self.users = users or {}
        self._user_ids = list(self.users)
        self.image_store = image_store
        self._items_without_images = items_without_images or set()
        self.catalogue = Catalogue(item_ids, item_texts, item_table, spare=spare_items)
        self.device = item_table.device
        self._added: dict[str, AddedItem] = {}
        self._added_images: dict[str, bytes] = {}
        self.ann = ann
        self.ann_config: AnnConfig | None = ann.config if ann is not None else None
        self.store: ItemStore | None = None
        self.model_key = ""
        self._last_seq = 0
        # Unbatched: rankings computed at once, at most one per core (more would only time-slice the cores).
        self._compute = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 1)
        self.batcher = MicroBatcher(self._rank, max_batch, batch_wait_ms / 1000, batch_workers) if batching else None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.items_added_here = 0

    # ---- state ---------------------------------------------------------------------------------------

    def snapshot(self) -> CatalogueSnapshot:
        """The current catalogue; stays valid (and unchanged) while items are added."""
        return self.catalogue.snapshot()

    @property
    def num_items(self) -> int:
        return self.catalogue.snapshot().count

    @property
    def item_ids(self) -> list[str]:
        """The catalogue's item ids (catalogue index i -> item_ids[i - 1]), a copy."""
        return self.catalogue.ids[: self.num_items]

    @property
    def item_texts(self) -> list[str]:
        """The catalogue's item texts, a copy."""
        return self.catalogue.texts[: self.num_items]

    @property
    def model(self) -> PMMRec:
        """The whole model (waits while its item encoders load in the background at start-up)."""
        return self.served.model()

    @property
    def add_refusal(self) -> str | None:
        """Why this model cannot take new items, or None when it can."""
        tower = self.served.types.get("item_tower")
        if tower is not None:
            return (
                f"this model has an ID item tower ({tower}): it can only score the items "
                "it was trained on; adding items by content needs a content model (text and/or vision encoder)"
            )
        return None

    @property
    def needs_image(self) -> bool:
        """True when new items must come with an image (the model has a vision encoder)."""
        return "image" in self.served.item_inputs

    def has_image(self, item_id: str) -> bool:
        if item_id in self._added:
            return item_id in self._added_images
        return self.image_store is not None and item_id not in self._items_without_images

    def is_added(self, item_id: str) -> bool:
        return item_id in self._added

    def added_image(self, item_id: str) -> bytes | None:
        return self._added_images.get(item_id)

    def summary(self, index: int) -> dict[str, Any]:
        """Id, text, catalogue index, image availability and whether the item was added live."""
        item_id = self.catalogue.ids[index - 1]
        has_image = self.has_image(item_id)
        return {
            "item_id": item_id,
            "text": self.catalogue.texts[index - 1],
            "index": index,
            "has_image": has_image,
            "added": item_id in self._added,
            "image_url": image_url(item_id) if has_image else None,
        }

    # ---- ranking -------------------------------------------------------------------------------------

    def _rank(self, queries: list[RankQuery]) -> list[Ranked]:
        snapshot = self.catalogue.snapshot()
        ann = self.ann
        use_ann = ann is not None and self.ann_config is not None and snapshot.count >= self.ann_config.min_items
        return rank_queries(self.served.user, snapshot, queries, ann if use_ann else None)

    def recommend(
        self, *, user_id: str | None = None, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> dict[str, Any]:
        """Top-k items for a known user (their whole sequence) or a history of item ids (oldest first).

        Seen items (the history, or the user's whole sequence) are excluded unless `exclude_seen` is False.
        """
        if (user_id is None) == (history is None):
            raise ServiceError(422, "give exactly one of user_id and history")
        if not 1 <= k <= self.limits.max_k:
            raise ServiceError(422, f"k must be between 1 and {self.limits.max_k}, got {k}")
        snapshot = self.catalogue.snapshot()
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
                raise ServiceError(422, f"history has {len(history)} items; at most {self.limits.max_history} are accepted")
            looked_up = [(item, self.catalogue.lookup(item, snapshot)) for item in history]
            unknown = list(dict.fromkeys(item for item, index in looked_up if index is None))
            if unknown:
                shown = ", ".join(repr(item) for item in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise ServiceError(404, f"unknown item ids in history: {shown}")
            indices = [index for _, index in looked_up if index is not None]
        exclude = sorted(set(indices)) if exclude_seen else []
        query = RankQuery(window=indices[-self.served.max_length :], exclude=exclude, k=k)
        if self.batcher is not None:
            ranked = self.batcher.submit(query)
        else:
            with self._compute:
                ranked = self._rank([query])[0]
        finite = [(index, score) for index, score in ranked.items if math.isfinite(score)]  # never a 500 for a value
        items = [{"rank": rank, **self.summary(index), "score": score} for rank, (index, score) in enumerate(finite, 1)]
        for item in items:
            del item["index"]
        return {
            "items": items,
            "k": k,
            "user_id": user_id,
            "history_length": len(indices),
            "catalogue_size": ranked.catalogue_size,
            "excluded": len(exclude),
        }

    # ---- adding items ----------------------------------------------------------------------------------

    def add_item(self, item_id: str, text: str, image: bytes | None = None) -> dict[str, Any]:
        """Encode an item from its content, store it (when a store is set) and make it rankable at once."""
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
        if item_id in self.catalogue.index:
            raise ServiceError(409, f"item id {item_id!r} already exists")
        if self.needs_image and image is None:
            raise ServiceError(
                422,
                f"this model reads images ({self.served.types['vision']}): a new item needs image_base64 "
                "(a PNG, JPEG or WebP file, base64-encoded)",
            )
        model = self.served.model_for_request(self.limits.max_encoder_wait_s)
        sides = [self.limits.display_image_size]
        if model.vision is not None:
            sides.append(model.vision.image_size)
        picture = decode_image(image, self.limits, sides) if image is not None else None
        display = to_png(square_pixels(picture, self.limits.display_image_size)) if picture is not None else None
        with self.catalogue.lock:
            if item_id in self.catalogue.index:
                raise ServiceError(409, f"item id {item_id!r} already exists")
            vector = encode_item(model, text, picture, self.device)
            used = self.served.item_inputs
            if self.store is not None:
                try:
                    self.store.add(item_id, text, image, self.model_key, vector.cpu().numpy())
                except DuplicateItem:
                    raise ServiceError(409, f"item id {item_id!r} already exists (added by another replica)") from None
                except WriteError as exc:
                    raise ServiceError(503, f"{exc}; the item was not added") from None
                try:
                    self._catch_up_locked({item_id: (vector, used, display)})
                except Exception as exc:  # committed but the rows before it could not be read: publish it alone
                    log.warning("could not read the store after adding %r (%s); rows before it follow later", item_id, exc)
                    self._publish([(item_id, text, vector, used, display)])
            else:
                self._publish([(item_id, text, vector, used, display)])
            self.items_added_here += 1
        return self.summary(self.catalogue.index[item_id]) | {"encoded_from": used, "catalogue_size": self.num_items}

    def _publish(self, entries: list[tuple[str, str, torch.Tensor, list[str], bytes | None]]) -> None:
        """Append items to the catalogue (and the ANN index) and publish them; the caller holds the lock."""
        if not entries:
            return
        vectors = torch.stack([vector.to(self.device) for _, _, vector, _, _ in entries])
        last = self.catalogue.extend([e[0] for e in entries], [e[1] for e in entries], vectors)
        first = last - len(entries) + 1
        for offset, (item_id, text, _, used, display) in enumerate(entries):
            self._added[item_id] = AddedItem(item_id, first + offset, text, display is not None, used)
            if display is not None:
                self._added_images[item_id] = display
        if self.ann is not None:
            self.ann.add(np.arange(first, last + 1), vectors.cpu())

    # ---- look-ups (pmmrec.serving.queries) and construction (pmmrec.serving.runner) -----------------------

    @property
    def store_location(self) -> str:
        """Where live items are kept: the store's path or redacted URL, or 'memory only'."""
        return self.store.location if self.store is not None else "memory only"

    @property
    def added_count(self) -> int:
        return len(self._added)

    def describe_item(self, item_id: str) -> dict[str, Any]:
        return queries.describe_item(self, item_id)

    def search_items(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        return queries.search_items(self, query, limit)

    def search_users(self, prefix: str = "", limit: int = 20) -> tuple[list[str], int]:
        return queries.search_users(self, prefix, limit)

    def user_history(self, user_id: str, last: int = 50) -> dict[str, Any]:
        return queries.user_history(self, user_id, last)

    def image_png(self, item_id: str) -> bytes:
        return queries.image_png(self, item_id)

    def health(self) -> dict[str, Any]:
        return queries.health(self)

    def close(self) -> None:
        """Stop following the store, finish queued rankings and a model load in progress, release the store
        (idempotent)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        self.served.join(timeout=120)
        if self.batcher is not None:
            self.batcher.close()
        with self.catalogue.lock:
            if self.store is not None:
                self.store.close()
                self.store = None


def image_url(item_id: str) -> str:
    return "/images/" + quote(item_id, safe="")
