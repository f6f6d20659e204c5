"""Following the item store: live items loaded at start-up and, while the server runs, those other replicas add.

Rows are appended in the store's seq order on every replica (an add here appends after catching up), so all
replicas and every restart give each live item the same catalogue index.
"""

from __future__ import annotations

import logging
import threading

import torch

from pmmrec.fileio import WriteError
from pmmrec.serving.catalogue import Catalogue, LiveEntry
from pmmrec.serving.encoding import encode_item
from pmmrec.serving.images import decode_image, square_pixels, to_png
from pmmrec.serving.limits import Limits, ServiceError
from pmmrec.serving.served_model import ServedModel
from pmmrec.serving.store import DuplicateItem, ItemStore, LiveItem

log = logging.getLogger("pmmrec.serving")


class LiveItemsFollower:
    """Keeps a catalogue in step with an item store: the rows past the last one seen, published in seq order."""

    def __init__(
        self, store: ItemStore, model_key: str, catalogue: Catalogue, served: ServedModel, limits: Limits
    ) -> None:
        self.store = store
        self.model_key = model_key
        self.catalogue = catalogue
        self.served = served
        self.limits = limits
        self._last_seq = 0
        self.skipped = 0  # stored items this model cannot embed (an ID tower): not served
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def location(self) -> str:
        """The store's path or redacted URL."""
        return self.store.location

    def start(self, poll_interval: float = 1.0) -> int:
        """Load every stored live item (with its stored embedding, or encoded now), then look for new rows every
        `poll_interval` seconds (0: never). Returns how many items were loaded."""
        loaded = self.sync()
        if poll_interval > 0:
            self._poller = threading.Thread(target=self._poll, args=(poll_interval,), name="pmmrec-store", daemon=True)
            self._poller.start()
        return loaded

    def sync(self) -> int:
        """Read the items other servers added to the store since the last look; how many were new here."""
        before = self.catalogue.snapshot().count
        with self.catalogue.lock:
            self.catch_up_locked({})
        return self.catalogue.snapshot().count - before

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except Exception as exc:  # the store may be briefly unreachable; try again at the next tick
                log.warning("could not read new items from %s: %s", self.store.location, exc)

    def catch_up_locked(self, own: dict[str, LiveEntry]) -> None:
        """Publish the store's rows past the last seen seq, in seq order (so every replica has the same order); the
        caller holds the catalogue's lock. `own` holds the entries of rows this server just added itself."""
        rows = self.store.items_after(self._last_seq, self.model_key)
        entries = []
        for row in rows:
            if row.item_id in own:
                entries.append(own[row.item_id])
            elif row.item_id in self.catalogue.index:
                pass  # already published (a row read twice, or an item of the catalogue itself)
            elif self.served.add_refusal is not None:
                self.skipped += 1  # added for a content model; this one cannot embed it (it is kept in the store)
            else:
                entries.append(self._restore(row))
            self._last_seq = max(self._last_seq, row.seq)
        self.catalogue.publish(entries)

    def add_locked(self, entry: LiveEntry, image: bytes | None) -> None:
        """Commit an item added here (with its image file), then publish it after the rows other replicas stored
        before it; the caller holds the catalogue's lock. A ServiceError (409, 503) when the store refuses it."""
        try:
            self.store.add(entry.item_id, entry.text, image, self.model_key, entry.vector.cpu().numpy())
        except DuplicateItem:
            raise ServiceError(409, f"item id {entry.item_id!r} already exists (added by another replica)") from None
        except WriteError as exc:
            raise ServiceError(503, f"{exc}; the item was not added") from None
        try:
            self.catch_up_locked({entry.item_id: entry})
        except Exception as exc:  # committed but the rows before it could not be read: publish it alone
            log.warning("could not read the store after adding %r (%s); rows before it follow later", entry.item_id, exc)
            self.catalogue.publish([entry])

    def _restore(self, row: LiveItem) -> LiveEntry:
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
            vector = encode_item(self.served.model(), row.text, picture, self.catalogue.device)
            self.store.put_embedding(row.item_id, self.model_key, vector.cpu().numpy())
        return LiveEntry(row.item_id, row.text, vector, self.served.item_inputs, display)

    def stop(self) -> None:
        """Stop looking for new rows (waits for a look in progress, which takes the catalogue's lock)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)

    def close(self) -> None:
        """Stop following and close the store; `stop` first when the caller holds the catalogue's lock (so no add
        is writing to the store while it closes)."""
        self.stop()
        self.store.close()
