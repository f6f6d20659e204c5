"""The recommendation service: ranking, and items added live (kept durably when a store is attached).

It owns the catalogue (`Catalogue`), the read-only look-ups over it (`CatalogueView`, as `service.view`), the
ranking batcher and, with a store, the follower that keeps the catalogue in step with it (`LiveItemsFollower`).

Cost of a request: its share of one user-encoder pass and one matrix multiply with the item table (requests that
wait together are ranked in one batch, see `batching`). Adding an item costs one item-encoder pass and, with a
store, one committed write before the item is published; a request in flight keeps ranking the snapshot it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from typing import Any

import numpy as np
import torch

from pmmrec.data import ImageStore
from pmmrec.data.dataset import validate_identifier, validate_text
from pmmrec.errors import DatasetError, PmmrecError
from pmmrec.model import PMMRec
from pmmrec.ranking import RankQuery, rank_histories
from pmmrec.serving.ann import AnnIndex
from pmmrec.serving.batching import MicroBatcher, Ranked
from pmmrec.serving.catalogue import Catalogue, CatalogueSnapshot, LiveEntry
from pmmrec.serving.encoding import encode_item
from pmmrec.serving.images import decode_image, square_pixels, to_png
from pmmrec.serving.limits import ServiceError
from pmmrec.serving.live import LiveItemsFollower
from pmmrec.serving.options import ServeOptions
from pmmrec.serving.served_model import ServedModel, model_manifest
from pmmrec.serving.store import ItemStore
from pmmrec.serving.view import CatalogueView


class RecommenderService:
    """The catalogue of one model and the operations that rank and add items; look-ups are on `view`."""

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
        options: ServeOptions | None = None,
        ann: AnnIndex | None = None,
        unscored: list[int] | None = None,
    ) -> None:
        """`unscored`: catalogue indices never to recommend (an ID tower's never-trained rows, issue 24)."""
        self.served = ServedModel.of(model)
        if item_table.ndim != 2 or item_table.shape[1] != self.served.dim:
            raise PmmrecError(f"item table has shape {tuple(item_table.shape)}, expected (items + 1, {self.served.dim})")
        self.options = options = options or ServeOptions()
        self.limits = options.limits
        if manifest is None:
            manifest = self.served.manifest if self.served.manifest is not None else model_manifest(self.served.model())
        self.catalogue = Catalogue(
            item_ids, item_texts, item_table, spare=options.spare_items, ann=ann, scan=options.scan,
            int8_min_items=options.int8_min_items, int8_in_background=True,
        )  # fmt: skip
        self.view = CatalogueView(
            self.catalogue, self.served, options, users=users, image_store=image_store,
            items_without_images=items_without_images, dataset_name=dataset_name, manifest=manifest, reference=reference,
        )  # fmt: skip
        self.live: LiveItemsFollower | None = None
        # Unbatched: rankings computed at once, at most one per core (more would only time-slice the cores).
        self._compute = threading.BoundedSemaphore(options.max_parallel or os.cpu_count() or 1)
        self.batcher = (
            MicroBatcher(self._rank, options.max_batch, options.batch_wait_s, options.ranking_threads)
            if options.batching
            else None
        )
        self.items_added_here = 0
        self.unscored = frozenset(unscored or ())
        self.live_loaded = 0  # live items loaded from the store at start-up
        self.notes: list[str] = []  # what the start-up printed besides its one line (`pmmrec serve`)

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
    def device(self) -> torch.device:
        return self.catalogue.device

    @property
    def store_location(self) -> str:
        """Where live items are kept: the store's path or redacted URL, or 'memory only'."""
        return self.live.location if self.live is not None else "memory only"

    # ---- ranking -------------------------------------------------------------------------------------

    def _rank(self, queries: list[RankQuery]) -> list[Ranked]:
        """Rank queries against the current snapshot (exactly, or with the approximate index when it applies)."""
        snapshot = self.catalogue.snapshot()
        rankings = rank_histories(
            self.served.user, snapshot.table, queries, max_length=self.served.max_length,
            index=self.catalogue.index_for(snapshot),
        )  # fmt: skip
        return [Ranked(list(zip(r.indices.tolist(), r.scores.tolist(), strict=True)), snapshot.count) for r in rankings]

    def recommend(
        self, *, user_id: str | None = None, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> dict[str, Any]:
        """Top-k items for a known user (their whole sequence) or a history of item ids (oldest first), as
        `POST /recommend` answers (RecommendResponse's fields, in its order).

        Seen items (the history, or the user's whole sequence) are excluded unless `exclude_seen` is False.
        """
        batcher = self.batcher
        with batcher.expect() if batcher is not None else contextlib.nullcontext():
            query, excluded = self._query(user_id, history, k, exclude_seen)
            if batcher is not None:
                ranked = batcher.submit(query)
            else:
                with self._compute:
                    ranked = self._rank([query])[0]
        return self._answer(query, ranked, user_id, excluded)

    async def recommend_async(
        self, *, user_id: str | None = None, history: list[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> dict[str, Any]:
        """`recommend` on an event loop: the request waits for its batch without holding a thread."""
        batcher = self.batcher
        if batcher is None:
            return await asyncio.to_thread(
                self.recommend, user_id=user_id, history=history, k=k, exclude_seen=exclude_seen
            )
        with batcher.expect():
            query, excluded = self._query(user_id, history, k, exclude_seen)
            ranked = await asyncio.wrap_future(batcher.submit_future(query))
        return self._answer(query, ranked, user_id, excluded)

    def _query(
        self, user_id: str | None, history: list[str] | None, k: int, exclude_seen: bool
    ) -> tuple[RankQuery, int]:
        """The ranking a request asks for, its history and k checked (ServiceError naming what is wrong), and how
        many seen items it excludes; the never-trained rows (`unscored`) are excluded too, uncounted."""
        indices = self._history_indices(user_id, history, k)
        exclude = sorted(set(indices)) if exclude_seen else []
        never = sorted(self.unscored.union(exclude)) if self.unscored else exclude
        return RankQuery(indices, k, exclude=never), len(exclude)

    def _answer(self, query: RankQuery, ranked: Ranked, user_id: str | None, excluded: int) -> dict[str, Any]:
        """The response body, its fields in RecommendResponse's order (the route sends it without re-validating)."""
        view = self.view
        items = []
        finite = [(index, score) for index, score in ranked.items if math.isfinite(score)]  # never a 500 for a value
        for rank, (index, score) in enumerate(finite, start=1):
            summary = view.summary(index)
            items.append({
                "rank": rank, "item_id": summary["item_id"], "score": score, "text": summary["text"],
                "has_image": summary["has_image"], "added": summary["added"], "image_url": summary["image_url"],
            })  # fmt: skip
        return {
            "items": items,
            "k": query.k,
            "user_id": user_id,
            "history_length": len(query.history),
            "catalogue_size": ranked.catalogue_size,
            "excluded": excluded,
        }

    def _history_indices(self, user_id: str | None, history: list[str] | None, k: int) -> list[int]:
        """The catalogue indices a request ranks after (the user's sequence or the given item ids), checked."""
        if (user_id is None) == (history is None):
            raise ServiceError(422, "give exactly one of user_id and history")
        if not 1 <= k <= self.limits.max_k:
            raise ServiceError(422, f"k must be between 1 and {self.limits.max_k}, got {k}")
        if user_id is not None:
            sequence = self.view.users.get(user_id)
            if sequence is None:
                raise ServiceError(404, f"unknown user id {user_id!r}")
            return [int(i) for i in sequence]
        assert history is not None
        if not history:
            raise ServiceError(422, "history is empty: give at least one item id")
        if len(history) > self.limits.max_history:
            raise ServiceError(422, f"history has {len(history)} items; at most {self.limits.max_history} are accepted")
        snapshot = self.catalogue.snapshot()
        looked_up = [(item, self.catalogue.lookup(item, snapshot)) for item in history]
        unknown = list(dict.fromkeys(item for item, index in looked_up if index is None))
        if unknown:
            shown = ", ".join(repr(item) for item in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ServiceError(404, f"unknown item ids in history: {shown}")
        return [index for _, index in looked_up if index is not None]

    # ---- adding items ----------------------------------------------------------------------------------

    def add_item(self, item_id: str, text: str, image: bytes | None = None) -> dict[str, Any]:
        """Encode an item from its content, store it (when a store is attached) and make it rankable at once."""
        text = self._checked_new_item(item_id, text, image)
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
            entry = LiveEntry(item_id, text, vector, self.served.item_inputs, display)
            if self.live is not None:
                self.live.add_locked(entry, image)
            else:
                self.catalogue.publish([entry])
            self.items_added_here += 1
        summary = self.view.summary(self.catalogue.index[item_id])
        return summary | {"encoded_from": entry.encoded_from, "catalogue_size": self.num_items}

    def _checked_new_item(self, item_id: str, text: str, image: bytes | None) -> str:
        """The item's text, stripped, once the item may be added; a ServiceError naming why not otherwise."""
        refusal = self.served.add_refusal
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
        if self.served.needs_image and image is None:
            raise ServiceError(
                422,
                f"this model reads images ({self.served.types['vision']}): a new item needs image_base64 "
                "(a PNG, JPEG or WebP file, base64-encoded)",
            )
        return text

    # ---- the store and shutting down ------------------------------------------------------------------

    def attach_store(self, store: ItemStore, model_key: str, poll_interval: float = 1.0) -> int:
        """Load every stored live item and follow the store (see `LiveItemsFollower`); how many items were loaded."""
        self.live = LiveItemsFollower(store, model_key, self.catalogue, self.served, self.limits)
        self.view.store_location = store.location
        self.live_loaded = self.live.start(poll_interval)
        return self.live_loaded

    def close(self) -> None:
        """Stop following the store, finish queued rankings and a model load in progress, release the store
        (idempotent)."""
        if self.live is not None:
            self.live.stop()
        self.served.join(timeout=120)
        if self.batcher is not None:
            self.batcher.close()
        with self.catalogue.lock:
            if self.live is not None:
                self.live.close()
                self.live = None
                self.view.store_location = None
