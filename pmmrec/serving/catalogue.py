"""The in-memory catalogue: an append-only embedding table that readers use without ever waiting for writers.

With the int8 scan (`ServeOptions.scan`, CPU only) the float32 table is kept row-major ([capacity, d]) beside its
int8 copy (`int8_scan.Int8Table`): the scan reads the int8 copy, and the float32 rows are read only to re-score a
few hundred candidates and to look up a history's items, row gathers that a row-major table makes cheap. Without
it (`scan="fp32"`, on a GPU, or when an approximate index ranks every request from the start) the table is kept
column-major ([d, capacity], one column per item), because a vector times a [d, N] matrix runs about three times
faster on CPU than a [N, d] matrix times a vector. An append
writes the row or column past the published count (doubling the buffer when full), extends the int8 copy, and then
publishes a new `CatalogueSnapshot` with one attribute assignment; a request takes the snapshot at its start and
ranks exactly that catalogue.

Items added while the server runs (here, or by another replica through a shared store) are published with
`publish`, the one place that appends them: to the table, to the record of live items, and to the approximate
index when there is one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from pmmrec.errors import PmmrecError
from pmmrec.ranking import ApproximateIndex
from pmmrec.serving import int8_scan
from pmmrec.serving.ann import AnnIndex

log = logging.getLogger("pmmrec.serving")


@dataclass(frozen=True)
class CatalogueSnapshot:
    """What one request ranks: the item table [count + 1, d] (a view of the buffer, row-major or a transposed
    column-major one; row 0 = padding), the count, and the int8 copy of its first rows when the int8 scan is on."""

    table: torch.Tensor
    count: int
    int8: int8_scan.Int8Table | None = None


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
        scan: Literal["int8", "fp32"] = "fp32",
        int8_min_items: int = 20_000,
        int8_block: int = 4096,
        int8_in_background: bool = False,
    ) -> None:
        if len(item_ids) != len(item_texts):
            raise PmmrecError(f"{len(item_ids)} item ids but {len(item_texts)} texts")
        if table.ndim != 2 or table.shape[0] != len(item_ids) + 1:
            raise PmmrecError(
                f"item table has shape {tuple(table.shape)}, expected ({len(item_ids) + 1}, d) "
                "(one row per item plus the padding row 0)"
            )
        count = len(item_ids)
        # The layout is chosen once: row-major with an int8 copy when the scan applies, else column-major. An
        # approximate index that applies from the start ranks every request (the catalogue only grows): no copy.
        wanted = scan == "int8" and count >= int8_min_items and (ann is None or count < ann.config.min_items)
        self.rows = wanted and table.device.type == "cpu" and int8_scan.available()
        if wanted and not self.rows:
            log.info("no int8 scan (%s): float32 scoring", "not on CPU" if table.device.type != "cpu" else "no kernel")
        self.int8_block = int8_block
        shape = (count + 1 + spare, table.shape[1]) if self.rows else (table.shape[1], count + 1 + spare)
        buffer = torch.empty(shape, dtype=torch.float32, device=table.device)
        self._buffer = buffer  # rows (or columns) past the published count are free space for appends
        self._view(count)[:] = table.float()
        self._view(count)[0] = 0.0
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
        self._snapshot = CatalogueSnapshot(self._view(count), count)
        self.int8_ready = threading.Event()  # set once the int8 copy is published (or will never be)
        if not self.rows or count < 1:
            self.int8_ready.set()
        elif int8_in_background:  # seconds at 100,000 items: requests are ranked in float32 meanwhile
            threading.Thread(target=self._build_int8, name="pmmrec-int8", daemon=True).start()
        else:
            self._build_int8()

    def _view(self, count: int) -> torch.Tensor:
        """The table of items 0..count, [count + 1, d], a view of the buffer."""
        return self._buffer[: count + 1] if self.rows else self._buffer[:, : count + 1].T

    def _build_int8(self) -> None:
        """Build the int8 copy of the current table and publish it, extended by the items appended meanwhile."""
        try:
            built: int8_scan.Int8Table | None = int8_scan.Int8Table.build(self._snapshot.table)
        except ValueError as exc:  # a table with non-finite values: float32 scoring
            log.warning("no int8 scan: %s", exc)
            built = None
        if built is not None:
            with self.lock:
                current = self._snapshot
                self._snapshot = CatalogueSnapshot(current.table, current.count, built.extended(current.table, self.int8_block))
        self.int8_ready.set()

    @property
    def dim(self) -> int:
        return int(self._buffer.shape[1 if self.rows else 0])

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

    def index_for(self, snapshot: CatalogueSnapshot) -> ApproximateIndex | None:
        """What ranks `snapshot` instead of a float32 product over every item: the approximate index when it
        applies, else the int8 scan (exact) when there is a copy, else None (the float32 product)."""
        ann = self.ann_for(snapshot)
        return ann if ann is not None else snapshot.int8  # not `or`: an index may be falsy (len 0)

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
        snapshot = self._snapshot
        count = snapshot.count
        needed = count + 1 + len(item_ids)
        axis = 0 if self.rows else 1
        if needed > self._buffer.shape[axis]:
            shape = list(self._buffer.shape)
            shape[axis] = max(2 * shape[axis], needed)
            grown = torch.empty(shape, dtype=self._buffer.dtype, device=self._buffer.device)
            old = self._view(count)
            self._buffer = grown
            self._view(count)[:] = old
        self._view(needed - 1)[count + 1 :] = vectors.to(self._buffer.dtype)
        for offset, (item_id, text) in enumerate(zip(item_ids, texts, strict=True)):
            self.ids.append(item_id)
            self.texts.append(text)
            self.lower.append(text.lower())
            self.index[item_id] = count + 1 + offset
        table = self._view(needed - 1)
        int8 = snapshot.int8.extended(table, self.int8_block) if snapshot.int8 is not None else None
        self._snapshot = CatalogueSnapshot(table, needed - 1, int8)
        return needed - 1
