"""The in-memory catalogue: an append-only embedding table that readers use without ever waiting for writers.

The table is kept column-major ([d, capacity], one column per item) because a vector times a [d, N] matrix runs
about three times faster on CPU than a [N, d] matrix times a vector. An append writes the column past the
published count (doubling the buffer when full) and then publishes a new `CatalogueSnapshot` with one attribute
assignment; a request takes the snapshot at its start and ranks exactly that catalogue.

Items added while the server runs (here, or by another replica through a shared store) are published with
`publish`, the one place that appends them: to the table, to the record of live items, and to the approximate
index when there is one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from pmmrec.errors import PmmrecError
from pmmrec.serving.ann import AnnIndex


@dataclass(frozen=True)
class CatalogueSnapshot:
    """What one request ranks: item embeddings 0..count as columns [d, count + 1] (column 0 = padding), the count."""

    columns: torch.Tensor
    count: int

    @property
    def table(self) -> torch.Tensor:
        """The item table [count + 1, d] (a view; row 0 = padding)."""
        return self.columns.T


@dataclass(frozen=True)
class LiveEntry:
    """An item ready to publish: its id and text, its embedding [d], what of its content the model read, and the
    square PNG the page shows (None: no image)."""

    item_id: str
    text: str
    vector: torch.Tensor
    encoded_from: list[str]
    display: bytes | None


@dataclass
class AddedItem:
    """An item added while a server runs (here or, through a shared store, by another replica)."""

    item_id: str
    index: int
    text: str
    has_image: bool
    encoded_from: list[str] = field(default_factory=list)


class Catalogue:
    """Ids, texts and embeddings of every item, the live ones recorded apart, and the optional approximate index;
    appends are serialised (`lock`), reads are lock-free snapshots."""

    def __init__(
        self,
        item_ids: list[str],
        item_texts: list[str],
        table: torch.Tensor,
        spare: int = 1024,
        ann: AnnIndex | None = None,
    ) -> None:
        if len(item_ids) != len(item_texts):
            raise PmmrecError(f"{len(item_ids)} item ids but {len(item_texts)} texts")
        if table.ndim != 2 or table.shape[0] != len(item_ids) + 1:
            raise PmmrecError(
                f"item table has shape {tuple(table.shape)}, expected ({len(item_ids) + 1}, d) "
                "(one row per item plus the padding row 0)"
            )
        count = len(item_ids)
        buffer = torch.empty(table.shape[1], count + 1 + spare, dtype=torch.float32, device=table.device)
        buffer[:, : count + 1] = table.T.float()
        buffer[:, 0] = 0.0
        self._buffer = buffer  # columns past the published count are free space for appends
        self.ids: list[str] = list(item_ids)  # append-only; entries 0..count-1 never change
        self.texts: list[str] = list(item_texts)
        self.lower: list[str] = [text.lower() for text in item_texts]
        self.index: dict[str, int] = {item_id: position + 1 for position, item_id in enumerate(item_ids)}
        if len(self.index) != count:
            raise PmmrecError("item ids are not unique")
        self.lock = threading.Lock()  # held by the one writer at a time (encode, store, append)
        self.added: dict[str, AddedItem] = {}  # items added live, by id
        self.added_images: dict[str, bytes] = {}  # their display PNGs
        self.ann = ann
        self._snapshot = CatalogueSnapshot(columns=buffer[:, : count + 1], count=count)

    @property
    def dim(self) -> int:
        return int(self._buffer.shape[0])

    @property
    def device(self) -> torch.device:
        return self._buffer.device

    def snapshot(self) -> CatalogueSnapshot:
        """The current catalogue; stays valid (and unchanged) while items are added."""
        return self._snapshot

    def lookup(self, item_id: str, snapshot: CatalogueSnapshot | None = None) -> int | None:
        """The catalogue index of `item_id` within `snapshot` (default: the current one), or None."""
        snapshot = snapshot or self._snapshot
        index = self.index.get(item_id)
        return index if index is not None and index <= snapshot.count else None

    def ann_for(self, snapshot: CatalogueSnapshot) -> AnnIndex | None:
        """The approximate index when there is one and `snapshot` is large enough for it, else None (exact)."""
        ann = self.ann
        return ann if ann is not None and snapshot.count >= ann.config.min_items else None

    def publish(self, entries: list[LiveEntry]) -> None:
        """Append live items and publish them at once (table, live record, approximate index); the caller holds
        `lock`."""
        if not entries:
            return
        vectors = torch.stack([entry.vector.to(self.device) for entry in entries])
        last = self.extend([entry.item_id for entry in entries], [entry.text for entry in entries], vectors)
        first = last - len(entries) + 1
        for offset, entry in enumerate(entries):
            has_image = entry.display is not None
            self.added[entry.item_id] = AddedItem(entry.item_id, first + offset, entry.text, has_image, entry.encoded_from)
            if entry.display is not None:
                self.added_images[entry.item_id] = entry.display
        if self.ann is not None:
            self.ann.add(np.arange(first, last + 1), vectors.cpu())

    def append(self, item_id: str, text: str, vector: torch.Tensor) -> int:
        """Add one item and publish it; the caller holds `lock`. Returns its catalogue index."""
        return self.extend([item_id], [text], vector.reshape(1, -1))

    def extend(self, item_ids: list[str], texts: list[str], vectors: torch.Tensor) -> int:
        """Add items (rows of `vectors` [n, d]) and publish them at once; the caller holds `lock`."""
        count = self._snapshot.count
        needed = count + 1 + len(item_ids)
        buffer = self._buffer
        if needed > buffer.shape[1]:
            grown = torch.empty(buffer.shape[0], max(2 * buffer.shape[1], needed), dtype=buffer.dtype, device=buffer.device)
            grown[:, : count + 1] = buffer[:, : count + 1]
            buffer = self._buffer = grown
        buffer[:, count + 1 : needed] = vectors.T.to(buffer.dtype)
        for offset, (item_id, text) in enumerate(zip(item_ids, texts, strict=True)):
            self.ids.append(item_id)
            self.texts.append(text)
            self.lower.append(text.lower())
            self.index[item_id] = count + 1 + offset
        self._snapshot = CatalogueSnapshot(columns=buffer[:, :needed], count=needed - 1)
        return needed - 1
