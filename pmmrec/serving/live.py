"""Following the item store: live items loaded at start-up and, while the server runs, those other replicas add.

Rows are appended in the store's seq order on every replica (an add here appends after catching up), so all
replicas and every restart give each live item the same catalogue index.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from pmmrec.serving.encoding import encode_item
from pmmrec.serving.images import decode_image, square_pixels, to_png
from pmmrec.serving.limits import Limits, ServiceError
from pmmrec.serving.store import ItemStore, LiveItem

if TYPE_CHECKING:
    from pmmrec.serving.catalogue import Catalogue
    from pmmrec.serving.served_model import ServedModel

log = logging.getLogger("pmmrec.serving")

Entry = tuple[str, str, torch.Tensor, list[str], bytes | None]  # id, text, embedding, modalities read, display PNG


class LiveItemsFollower(ABC):
    """The store half of `RecommenderService` (which provides the attributes declared here and `_publish`)."""

    served: ServedModel
    catalogue: Catalogue
    limits: Limits
    device: torch.device
    store: ItemStore | None
    model_key: str
    _last_seq: int
    _stop: threading.Event
    _poller: threading.Thread | None

    @abstractmethod
    def _publish(self, entries: list[Entry]) -> None:
        """Append items to the catalogue (the service does it under its lock)."""

    def attach_store(self, store: ItemStore, model_key: str, poll_interval: float = 1.0) -> int:
        """Load every stored live item (with its stored embedding, or encoded now) and follow the store.

        Items other servers add to the same store appear here within `poll_interval` seconds plus the time to
        encode them (when they were stored for another model). Returns how many items were loaded.
        """
        self.store, self.model_key = store, model_key
        before = self.num_items
        with self.catalogue.lock:
            self._catch_up_locked({})
        if poll_interval > 0:
            self._poller = threading.Thread(target=self._poll, args=(poll_interval,), name="pmmrec-store", daemon=True)
            self._poller.start()
        return self.num_items - before

    def sync(self) -> int:
        """Read the items other servers added to the store since the last look; how many were new here."""
        before = self.num_items
        with self.catalogue.lock:
            self._catch_up_locked({})
        return self.num_items - before

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except Exception as exc:  # the store may be briefly unreachable; try again at the next tick
                log.warning("could not read new items from %s: %s", getattr(self.store, "location", "?"), exc)

    def _catch_up_locked(self, own: dict[str, tuple[torch.Tensor, list[str], bytes | None]]) -> None:
        """Append the store's rows past the last seen seq, in seq order (so every replica has the same order)."""
        assert self.store is not None
        rows = self.store.items_after(self._last_seq, self.model_key)
        entries = []
        for row in rows:
            if row.item_id in own:
                vector, used, display = own[row.item_id]
                entries.append((row.item_id, row.text, vector, used, display))
            elif row.item_id not in self.catalogue.index:
                entries.append(self._restore(row))
            self._last_seq = max(self._last_seq, row.seq)
        self._publish(entries)

    def _restore(self, row: LiveItem) -> Entry:
        """A stored item ready to publish: its stored embedding, or one encoded now (and stored for next time)."""
        picture = None
        if row.image is not None:
            try:
                picture = decode_image(row.image, self.limits, [self.limits.display_image_size])
            except ServiceError as exc:
                log.warning("stored image of live item %r is unusable (%s); item kept without it", row.item_id, exc.message)
        display = to_png(square_pixels(picture, self.limits.display_image_size)) if picture is not None else None
        if row.embedding is not None and row.embedding.shape == (self.served.dim,):
            vector = torch.from_numpy(row.embedding)
        else:
            vector = encode_item(self.served.model(), row.text, picture, self.device)
            assert self.store is not None
            self.store.put_embedding(row.item_id, self.model_key, vector.cpu().numpy())
        return row.item_id, row.text, vector, self.served.item_inputs, display
