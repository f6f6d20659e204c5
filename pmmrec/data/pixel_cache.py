"""A bounded cache of decoded item images, so popular items are not decoded again in every batch.

Interactions are skewed: over one epoch the most popular items appear in almost every batch, and decoding the same
JPEG thousands of times is what keeps a DataLoader from feeding an accelerator. Each process (each DataLoader
worker) keeps its own least-recently-used set of prepared images (uint8, S x S x 3) up to a byte budget; a pickled
cache (sent to a spawned worker) arrives empty, so workers never inherit a copy of the parent's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_PIXEL_CACHE_BYTES = 128 * 1024**2
_ABSENT = object()


class PixelCache:
    """Least-recently-used prepared images by catalogue index, at most `max_bytes` of pixels (0 disables it)."""

    def __init__(self, max_bytes: int = DEFAULT_PIXEL_CACHE_BYTES) -> None:
        self.max_bytes = max(int(max_bytes), 0)
        self._entries: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get_many(
        self, indices: Sequence[int], load: Callable[[list[int]], list[np.ndarray | None]]
    ) -> list[np.ndarray | None]:
        """The images of `indices`, loading (with one `load` call) only those not cached."""
        out: list[Any] = [_ABSENT] * len(indices)
        missing: list[int] = []
        for position, index in enumerate(indices):
            value = self._entries.get(index, _ABSENT)
            if value is _ABSENT:
                missing.append(position)
            else:
                self._entries.move_to_end(index)
                out[position] = value
        self.hits += len(indices) - len(missing)
        self.misses += len(missing)
        if missing:
            loaded = load([indices[position] for position in missing])
            for position, value in zip(missing, loaded, strict=True):
                out[position] = value
                self._put(indices[position], value)
        return out

    def _put(self, index: int, value: np.ndarray | None) -> None:
        size = value.nbytes if value is not None else 0
        if not self.max_bytes or size > self.max_bytes or index in self._entries:
            return
        if value is not None:
            value.setflags(write=False)  # shared by every batch that hits it: nobody may change it in place
        self._entries[index] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes if evicted is not None else 0

    @property
    def bytes(self) -> int:
        """Pixels held now."""
        return self._bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (PixelCache, (self.max_bytes,))
