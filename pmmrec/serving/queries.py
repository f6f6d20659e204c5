"""Read-only look-ups the page and the API offer besides ranking: items, users, images and the server's health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pmmrec._version import __version__
from pmmrec.errors import DatasetError
from pmmrec.serving.images import to_png
from pmmrec.serving.limits import ServiceError

if TYPE_CHECKING:
    from pmmrec.model import PMMRec
    from pmmrec.serving.service import RecommenderService


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
    return {"pmmrec_type": "model/pmmrec", "dim": model.dim, "modalities": sorted(model.modalities), "components": components}


def describe_item(service: RecommenderService, item_id: str) -> dict[str, Any]:
    """Id, text, catalogue index, image availability and whether it was added live; 404 when unknown."""
    index = service.catalogue.lookup(item_id)
    if index is None:
        raise ServiceError(404, f"unknown item id {item_id!r}")
    return service.summary(index)


def search_items(service: RecommenderService, query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Items whose text contains `query` (case-insensitive), those starting with it first; an exact id first."""
    catalogue = service.catalogue
    snapshot = catalogue.snapshot()
    needle = query.strip().lower()
    limit = max(1, min(limit, service.limits.max_results))
    exact = catalogue.lookup(query.strip(), snapshot)
    found: list[int] = [exact] if exact is not None else []
    if needle:
        texts = catalogue.lower[: snapshot.count]
        starting = [i + 1 for i, text in enumerate(texts) if text.startswith(needle)]
        containing = [i + 1 for i, text in enumerate(texts) if needle in text and not text.startswith(needle)]
        # Newest first within each group, so live-added items are easy to find.
        found += [i for i in reversed(starting) if i != exact] + [i for i in reversed(containing) if i != exact]
    return [service.summary(index) for index in found[:limit]]


def search_users(service: RecommenderService, prefix: str = "", limit: int = 20) -> tuple[list[str], int]:
    """User ids starting with `prefix` (at most `limit`) and how many match."""
    limit = max(1, min(limit, service.limits.max_results))
    users = list(service.users)
    matches = [user for user in users if user.startswith(prefix)] if prefix else users
    return matches[:limit], len(matches)


def user_history(service: RecommenderService, user_id: str, last: int = 50) -> dict[str, Any]:
    """A user's sequence length and their most recent items (oldest first)."""
    sequence = service.users.get(user_id)
    if sequence is None:
        raise ServiceError(404, f"unknown user id {user_id!r}")
    last = max(1, min(last, service.limits.max_history))
    return {
        "user_id": user_id,
        "length": len(sequence),
        "history": [service.summary(int(index)) for index in sequence[-last:]],
    }


def image_png(service: RecommenderService, item_id: str) -> bytes:
    """The item's image as PNG bytes; 404 when the item is unknown or has none."""
    if service.catalogue.lookup(item_id) is None:
        raise ServiceError(404, f"unknown item id {item_id!r}")
    if service.is_added(item_id):
        png = service.added_image(item_id)
        if png is None:
            raise ServiceError(404, f"item {item_id!r} has no image")
        return png
    if not service.has_image(item_id) or service.image_store is None:
        raise ServiceError(404, f"item {item_id!r} has no image")
    try:
        pixels = service.image_store.get(item_id)
    except DatasetError as exc:
        raise ServiceError(404, f"item {item_id!r}: stored image is unreadable ({exc})") from None
    if pixels is None:
        raise ServiceError(404, f"item {item_id!r} has no image")
    return to_png(pixels)


def health(service: RecommenderService) -> dict[str, Any]:
    """Model manifest (component references, resolved commits), catalogue size, limits and the serving set-up."""
    snapshot = service.catalogue.snapshot()
    ann = service.ann
    return {
        "status": "ok",
        "pmmrec_version": __version__,
        "model": {"reference": service.reference, "manifest": service.manifest},
        "dim": service.served.dim,
        "modalities": sorted(service.served.modalities),
        "max_length": service.served.max_length,
        "item_encoders": service.served.state,
        "dataset": service.dataset_name,
        "items": snapshot.count,
        "added_items": service.added_count,
        "users": len(service.users),
        "can_add_items": service.add_refusal is None,
        "add_items_refusal": service.add_refusal,
        "new_items_need_image": service.needs_image,
        "limits": service.limits.model_dump(),
        "store": getattr(service.store, "location", None),
        "search": (
            f"approximate ({ann.config.backend} HNSW)"
            if ann is not None and snapshot.count >= ann.config.min_items
            else "exact"
        ),
        "batching": service.batcher is not None,
    }
