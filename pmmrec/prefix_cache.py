"""Frozen-prefix cache: the frozen bottom of each encoder runs once per item, not once per step.

The paper trains only the top 2 layers of 12-layer encoders; their frozen bottom is a fixed function
(frozen modules stay in eval mode), so its output per item is computed once, stored in memory or in a
memory-mapped fp16 file for large catalogues, and each training step runs only the trainable top.
Text prefixes are stored jagged: the real tokens of every item, one after another ([total tokens, hidden], item
r at rows offsets[r]:offsets[r+1], offsets from the token masks), so no padding is computed or stored.
The cache key covers the frozen weights, the encoder's config and the exact inputs (token rows and masks; the
stored bytes of every image), so a stale cache is never used. Only the memory-mapped files outlive a run: they
are named by that key under $PMMREC_CACHE/prefix (or `cache_dir`) and reused by later runs on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pmmrec.components import ItemEncoder, TextEncoder
from pmmrec.data import BatchCollator, ItemBatch, SequenceBatch
from pmmrec.model import PMMRec
from pmmrec.modes import eval_mode
from pmmrec.paths import cache_root

# Above this many bytes (fp32 in memory), prefixes go to a memory-mapped fp16 file instead.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Part of every key: bump when the way prefixes are computed or stored changes.
PREFIX_CACHE_VERSION = b"pmmrec-prefix-cache-3"


def _state_digest(modules: list[torch.nn.Module], extra: bytes) -> str:
    digest = hashlib.sha256(PREFIX_CACHE_VERSION + extra)
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(
                # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
                tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                if tensor.numel()
                else b""
            )
    return digest.hexdigest()


class FrozenPrefixCache:
    """Per-item outputs of the frozen encoder bottoms; rows indexed by catalogue index (row 0 = padding)."""

    def __init__(
        self,
        text_prefix: torch.Tensor | np.ndarray | None,
        image_prefix: torch.Tensor | np.ndarray | None,
        device: torch.device,
        key: str,
        text_offsets: np.ndarray | None = None,
    ) -> None:
        self.text_prefix = text_prefix  # jagged: [total real tokens, hidden]; rows of item r from text_offsets
        self.text_offsets = text_offsets
        self.image_prefix = image_prefix
        self.device = device
        self.key = key
        self._collator: BatchCollator | None = None
        self._num_items = 0

    @property
    def caches_text(self) -> bool:
        return self.text_prefix is not None

    @property
    def caches_image(self) -> bool:
        return self.image_prefix is not None

    @classmethod
    def for_model(
        cls,
        model: PMMRec,
        collator: BatchCollator,
        device: torch.device,
        batch_size: int = 128,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        cache_dir: Path | None = None,
    ) -> FrozenPrefixCache | None:
        """Build the cache for every catalogue item, or None when no encoder has a frozen bottom."""
        num_items = len(collator.item_ids)
        text = model.text if model.text is not None and model.text.has_frozen_prefix else None
        vision = model.vision if model.vision is not None and model.vision.has_frozen_prefix else None
        if text is None and vision is None:
            return None
        text_prefix = image_prefix = None
        key_parts = []
        text_offsets = None
        if text is not None:
            assert collator.text_ids is not None and collator.text_mask is not None
            text_offsets = jagged_offsets(collator.text_mask)
            text_prefix = _compute_text(
                text,
                collator,
                text_offsets,
                device,
                batch_size=batch_size,
                memory_budget=memory_budget,
                cache_dir=cache_dir,
                key=_state_digest(
                    text.frozen_modules(),
                    _config_digest(text)
                    + _input_digest(collator.text_ids)
                    + _input_digest(collator.text_mask.to(torch.bool)),
                ),
            )
            key_parts.append("text")
        if vision is not None:
            image_prefix = _compute(
                lambda batch: vision.frozen_prefix(batch.pixel_values),
                collator,
                num_items,
                device,
                batch_size=batch_size,
                memory_budget=memory_budget,
                cache_dir=cache_dir,
                label="image",
                key=_state_digest(vision.frozen_modules(), _config_digest(vision) + _images_digest(collator)),
            )
            key_parts.append("image")
        cache = cls(text_prefix, image_prefix, device, "+".join(key_parts), text_offsets=text_offsets)
        cache._collator = collator
        cache._num_items = num_items
        return cache

    def _rows(self, store: torch.Tensor | np.ndarray, items: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(store, np.ndarray):
            rows = torch.from_numpy(np.ascontiguousarray(store[items.cpu().numpy()]))
        else:
            rows = store[items.to(store.device)]
        return rows.to(self.device, dtype=dtype, non_blocking=True)

    def text_rows(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cached text prefixes of `items` laid out as their token mask [U, W] says: [U, W, hidden], zero padding."""
        assert self.text_prefix is not None and self.text_offsets is not None
        mask = mask.to(torch.bool)
        rows = jagged_rows(self.text_offsets, items.cpu().numpy())
        if isinstance(self.text_prefix, np.ndarray):
            packed = torch.from_numpy(np.ascontiguousarray(self.text_prefix[rows]))
        else:
            packed = self.text_prefix[torch.from_numpy(rows).to(self.text_prefix.device)]
        packed = packed.to(self.device, dtype=torch.float32, non_blocking=True)
        flat = mask.to(self.device).reshape(-1).nonzero().squeeze(1)
        if flat.numel() != packed.shape[0]:
            raise ValueError("text_mask does not match the cached token counts (a cache built for other inputs)")
        out = packed.new_zeros(mask.shape[0] * mask.shape[1], packed.shape[1])
        return out.index_copy(0, flat, packed).view(mask.shape[0], mask.shape[1], -1)

    def lookup(self, batch: SequenceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Cached prefixes of the batch's distinct items (None for an encoder without a cache)."""
        items = batch.unique_items
        text = None
        if self.text_prefix is not None:
            assert batch.text_mask is not None
            text = self.text_rows(items, _trim(batch.text_mask.cpu()))
        image = self._rows(self.image_prefix, items, torch.float32) if self.image_prefix is not None else None
        return text, image

    @torch.inference_mode()
    def item_table(self, model: PMMRec, batch_size: int = 256) -> torch.Tensor:
        """The catalogue embedding table, running only the trainable tops on cached prefixes.

        Items go in chunks of similar text length, so the fusion pads little too.
        """
        assert self._collator is not None
        table = torch.zeros(self._num_items + 1, model.dim, device=self.device)
        order = catalogue_order(self._collator, self._num_items)
        with eval_mode(model):
            for start in range(0, self._num_items, batch_size):
                items, embeddings = self._encode_chunk(model, order[start : start + batch_size])
                table[items] = embeddings.float()
        return table

    def _encode_chunk(self, model: PMMRec, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(catalogue indices on the device, their embeddings) of one chunk, from cached prefixes."""
        assert self._collator is not None
        batch = self._collator.collate_items(indices, include_images=not self.caches_image)
        items = batch.items
        text_prefix = None
        if self.caches_text:
            assert batch.text_mask is not None
            batch.text_mask = _trim(batch.text_mask)
            batch.text_ids = batch.text_ids[:, : batch.text_mask.shape[1]] if batch.text_ids is not None else None
            text_prefix = self.text_rows(items, batch.text_mask)
        image_prefix = self._rows(self.image_prefix, items, torch.float32) if self.caches_image else None
        batch = batch.to(self.device)
        encoded = model.embed_items(
            batch.text_ids,
            batch.text_mask,
            batch.pixel_values,
            item_indices=batch.items,
            text_prefix=text_prefix,
            image_prefix=image_prefix,
        )
        return batch.items, encoded.embeddings


def catalogue_order(collator: BatchCollator, num_items: int) -> list[int]:
    """Catalogue indices 1..N, shortest text first (catalogue order without text): chunks of similar length pad
    little (in the fusion too; the text encoder itself computes real tokens only)."""
    if collator.text_mask is None:
        return list(range(1, num_items + 1))
    lengths = collator.text_mask[1 : num_items + 1].to(torch.int64).sum(dim=1)
    return (torch.argsort(lengths, stable=True) + 1).tolist()


def jagged_offsets(text_mask: torch.Tensor) -> np.ndarray:
    """Row offsets [N+2] of the jagged store: item r's real tokens at rows offsets[r]:offsets[r+1]; row 0 (the
    padding item, never looked up) stores nothing."""
    lengths = text_mask.to(torch.bool).sum(dim=1).to(torch.int64).numpy()
    lengths[0] = 0
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def jagged_rows(offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Store rows of `items`' tokens, item after item (vectorised: no per-item Python loop)."""
    starts = offsets[items]
    lengths = offsets[items + 1] - starts
    total = int(lengths.sum())
    before = np.zeros(len(items), dtype=np.int64)
    np.cumsum(lengths[:-1], out=before[1:])
    return np.repeat(starts - before, lengths) + np.arange(total, dtype=np.int64)


def _trim(mask: torch.Tensor) -> torch.Tensor:
    """The mask without columns that are padding for every row (at least one column kept)."""
    columns = torch.arange(1, mask.shape[1] + 1)
    width = max(int((mask.to(torch.bool) * columns).amax()), 1) if mask.numel() else mask.shape[1]
    return mask[:, :width]


def _input_digest(tensor: torch.Tensor | None) -> bytes:
    if tensor is None:
        return b""
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))  # hashed in place: no copy as bytes
    return digest.digest()


def _config_digest(encoder: ItemEncoder) -> bytes:
    """The encoder's architecture and preprocessing (backbone config, image size and normalisation, depth)."""
    payload = json.dumps(encoder.config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{type(encoder).__name__}:{payload}".encode()).digest()


def _images_digest(collator: BatchCollator) -> bytes:
    """Every catalogue item's stored image bytes (or their absence), in catalogue order, and the input size."""
    digest = hashlib.sha256(f"image_size={collator.image_size}".encode())
    store = collator.image_store
    for item_id in collator.item_ids:
        encoded = item_id.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
        value = store.get_value(item_id) if store is not None else None
        digest.update(b"\x00" if value is None else b"\x01" + len(value).to_bytes(8, "little") + value)
    return digest.digest()


@torch.inference_mode()
def _compute_text(
    encoder: TextEncoder,
    collator: BatchCollator,
    offsets: np.ndarray,
    device: torch.device,
    *,
    batch_size: int,
    memory_budget: int,
    cache_dir: Path | None,
    key: str,
) -> torch.Tensor | np.ndarray:
    """The jagged text store: the frozen prefix of every item's real tokens, in chunks of similar length."""
    num_items = len(offsets) - 2
    folder = cache_dir or cache_root() / "prefix"
    path = folder / f"text-{key[:32]}"
    reused = _reuse(Path(str(path) + ".npy"), int(offsets[-1]))
    if reused is not None:
        return reused
    store: torch.Tensor | np.ndarray | None = None
    tmp: str | None = None
    order = catalogue_order(collator, num_items)
    for start in range(0, num_items, batch_size):
        indices = order[start : start + batch_size]
        batch = collator.collate_items(indices, include_images=False)
        assert batch.text_ids is not None and batch.text_mask is not None
        mask = _trim(batch.text_mask).to(torch.bool)
        out = encoder.frozen_prefix(batch.text_ids[:, : mask.shape[1]].to(device), mask.to(device))
        packed = out[mask.to(device)].float()
        if store is None:  # the width is the encoder's hidden size, known from its first output
            store, tmp = _allocate((int(offsets[-1]), packed.shape[1]), memory_budget, folder, path, device)
        rows = jagged_rows(offsets, np.asarray(indices, dtype=np.int64))
        if isinstance(store, np.ndarray):
            store[rows] = packed.cpu().numpy().astype(np.float16)
        else:
            store[torch.from_numpy(rows).to(device)] = packed
    if store is None:  # an empty catalogue
        store = torch.zeros(0, 0, device=device)
    return _finish(store, tmp, path)


def _reuse(final: Path, rows: int, width: int | None = None) -> np.ndarray | None:
    """A stored fp16 file of this key with `rows` rows (of `width` columns when given), made from the same frozen
    weights, config and inputs; else None."""
    if not final.is_file():
        return None
    try:
        reused = np.load(str(final), mmap_mode="r")
    except (OSError, ValueError):  # unreadable: rebuilt
        return None
    same = reused.shape[0] == rows and (width is None or reused.shape[1:] == (width,))
    return reused if same and reused.dtype == np.float16 else None


def _allocate(
    shape: tuple[int, ...], memory_budget: int, folder: Path, path: Path, device: torch.device
) -> tuple[torch.Tensor | np.ndarray, str | None]:
    """fp32 in memory within the budget, else a memory-mapped fp16 temporary file (per process)."""
    if int(np.prod(shape)) * 4 <= memory_budget:
        return torch.zeros(shape, dtype=torch.float32, device=device), None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"  # per process: concurrent builders never share a half-written file
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape), tmp


def _finish(store: torch.Tensor | np.ndarray, tmp: str | None, path: Path) -> torch.Tensor | np.ndarray:
    """Rename a finished memory-mapped file into place and reopen it read-only."""
    if tmp is None or not isinstance(store, np.memmap):
        return store
    store.flush()
    del store
    final = Path(str(path) + ".npy")
    os.replace(tmp, final)
    return np.load(str(final), mmap_mode="r")


@torch.inference_mode()
def _compute(
    run: Callable[[ItemBatch], torch.Tensor],
    collator: BatchCollator,
    num_items: int,
    device: torch.device,
    *,
    batch_size: int,
    memory_budget: int,
    cache_dir: Path | None,
    label: str,
    key: str,
) -> torch.Tensor | np.ndarray:
    """A dense store [N+1, ...] of `run`'s output per item (image prefixes: every item has the same token count)."""
    folder = cache_dir or cache_root() / "prefix"
    path = folder / f"{label}-{key[:32]}"
    reused = _reuse(Path(str(path) + ".npy"), num_items + 1)
    if reused is not None:
        return reused
    store: torch.Tensor | np.ndarray | None = None
    tmp: str | None = None
    for start in range(0, num_items, batch_size):
        indices = list(range(start + 1, min(start + batch_size, num_items) + 1))
        batch = collator.collate_items(indices, include_images=label == "image").to(device)
        out = run(batch).float()
        if store is None:
            shape = (num_items + 1, *out.shape[1:])
            store, tmp = _allocate(shape, memory_budget, folder, path, device)
        if isinstance(store, np.ndarray):
            store[indices] = out.cpu().numpy().astype(np.float16)
        else:
            store[torch.as_tensor(indices, device=device)] = out
    assert store is not None
    return _finish(store, tmp, path)
