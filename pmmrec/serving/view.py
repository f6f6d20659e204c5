"""What a server answers without ranking: items, users, images and its health, read from the catalogue it serves.

`CatalogueView` is the one home of these read-only look-ups. It reads the catalogue (items, live items, the
approximate index), the dataset's users and images, and the model's facts; it never calls back into the service
that owns it, and it changes nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import numpy as np

from pmmrec._version import __version__
from pmmrec.data import ImageStore
from pmmrec.errors import DatasetError
from pmmrec.serving.catalogue import Catalogue
from pmmrec.serving.images import to_png
from pmmrec.serving.limits import ServiceError
from pmmrec.serving.options import ServeOptions
from pmmrec.serving.served_model import ServedModel


def image_url(item_id: str) -> str:
    return "/images/" + quote(item_id, safe="")


class CatalogueView:
    """Read-only look-ups over a served catalogue: item summaries and search, users and their histories, images,
    and the server's health."""

    def __init__(
        self,
        catalogue: Catalogue,
        served: ServedModel,
        options: ServeOptions,
        *,
        users: dict[str, np.ndarray] | None = None,
        image_store: ImageStore | None = None,
        items_without_images: set[str] | None = None,
        dataset_name: str = "catalogue",
        manifest: dict[str, Any] | None = None,
        reference: str | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.served = served
        self.options = options
        self.limits = options.limits
        self.users = users or {}
        self.image_store = image_store
        self.items_without_images = items_without_images or set()
        self.dataset_name = dataset_name
        self.manifest = manifest
        self.reference = reference
        self.store_location: str | None = None  # where live items are kept, once a store is attached

    # ---- items -------------------------------------------------------------------------------------------

    def has_image(self, item_id: str) -> bool:
        if item_id in self.catalogue.added:
            return item_id in self.catalogue.added_images
        return self.image_store is not None and item_id not in self.items_without_images

    def summary(self, index: int) -> dict[str, Any]:
        """Id, text, catalogue index, image availability and whether the item was added live."""
        item_id = self.catalogue.ids[index - 1]
        has_image = self.has_image(item_id)
        return {
            "item_id": item_id,
            "text": self.catalogue.texts[index - 1],
            "index": index,
            "has_image": has_image,
            "added": item_id in self.catalogue.added,
            "image_url": image_url(item_id) if has_image else None,
        }

    def describe_item(self, item_id: str) -> dict[str, Any]:
        """The item's summary; 404 when unknown."""
        index = self.catalogue.lookup(item_id)
        if index is None:
            raise ServiceError(404, f"unknown item id {item_id!r}")
        return self.summary(index)

    def search_items(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose text contains `query` (case-insensitive), those starting with it first; an exact id first."""
        catalogue = self.catalogue
        snapshot = catalogue.snapshot()
        needle = query.strip().lower()
        limit = max(1, min(limit, self.limits.max_results))
        exact = catalogue.lookup(query.strip(), snapshot)
        found: list[int] = [exact] if exact is not None else []
        if needle:
            texts = catalogue.lower[: snapshot.count]
            starting = [i + 1 for i, text in enumerate(texts) if text.startswith(needle)]
            containing = [i + 1 for i, text in enumerate(texts) if needle in text and not text.startswith(needle)]
            # Newest first within each group, so live-added items are easy to find.
            found += [i for i in reversed(starting) if i != exact] + [i for i in reversed(containing) if i != exact]
        return [self.summary(index) for index in found[:limit]]

    def image_png(self, item_id: str) -> bytes:
        """The item's image as PNG bytes; 404 when the item is unknown or has none."""
        if self.catalogue.lookup(item_id) is None:
            raise ServiceError(404, f"unknown item id {item_id!r}")
        if item_id in self.catalogue.added:
            png = self.catalogue.added_images.get(item_id)
            if png is None:
                raise ServiceError(404, f"item {item_id!r} has no image")
            return png
        if not self.has_image(item_id) or self.image_store is None:
            raise ServiceError(404, f"item {item_id!r} has no image")
        try:
            pixels = self.image_store.get(item_id)
        except DatasetError as exc:
            raise ServiceError(404, f"item {item_id!r}: stored image is unreadable ({exc})") from None
        if pixels is None:
            raise ServiceError(404, f"item {item_id!r} has no image")
        return to_png(pixels)

    # ---- users -------------------------------------------------------------------------------------------

    def search_users(self, prefix: str = "", limit: int = 20) -> tuple[list[str], int]:
        """User ids starting with `prefix` (at most `limit`) and how many match."""
        limit = max(1, min(limit, self.limits.max_results))
        users = list(self.users)
        matches = [user for user in users if user.startswith(prefix)] if prefix else users
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
            "history": [self.summary(int(index)) for index in sequence[-last:]],
        }

    # ---- the server --------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Model manifest (component references, resolved commits), catalogue size, limits and the serving set-up."""
        snapshot = self.catalogue.snapshot()
        ann = self.catalogue.ann_for(snapshot)
        served = self.served
        return {
            "status": "ok",
            "pmmrec_version": __version__,
            "model": {"reference": self.reference, "manifest": self.manifest},
            "dim": served.dim,
            "modalities": sorted(served.modalities),
            "max_length": served.max_length,
            "item_encoders": served.state,
            "dataset": self.dataset_name,
            "items": snapshot.count,
            "added_items": len(self.catalogue.added),
            "users": len(self.users),
            "can_add_items": served.add_refusal is None,
            "add_items_refusal": served.add_refusal,
            "new_items_need_image": served.needs_image,
            "limits": self.limits.model_dump(),
            "store": self.store_location,
            "search": f"approximate ({ann.description})" if ann is not None else "exact",
            "batching": self.options.batching,
        }
