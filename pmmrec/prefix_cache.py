"""Frozen-prefix cache: the frozen bottom of each encoder runs once per item, not once per step.

The paper trains only the top 2 layers of 12-layer encoders; their frozen bottom is a fixed function
(frozen modules stay in eval mode), so its output per item is computed once, stored in memory or in a
memory-mapped fp16 file for large catalogues, and each training step runs only the trainable top.
Generic over the modalities: each encoder with a frozen bottom gets one store. A modality whose reader marks real
tokens (text) is stored jagged: the real tokens of every item, one after another ([total tokens, hidden], item
r at rows offsets[r]:offsets[r+1], offsets from the token masks), so no padding is computed or stored; the others
(images: every item has the same token count) densely, [N+1, ...] by catalogue index.
The cache key covers the frozen weights, the encoder's config and the exact inputs (the reader's digest: token
rows and masks; the stored bytes of every image), so a stale cache is never used. Only the memory-mapped files
outlive a run: they are named by that key under $PMMREC_CACHE/prefix (or `cache_dir`) and reused by later runs on
the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pmmrec.components import ItemEncoder
from pmmrec.data import BatchCollator, ItemBatch, SequenceBatch
from pmmrec.errors import ConfigError
from pmmrec.model import PMMRec
from pmmrec.modes import eval_mode
from pmmrec.paths import cache_root
from pmmrec.slots import SLOT

# Above this many bytes (fp32 in memory), prefixes go to a memory-mapped fp16 file instead.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Part of every key: bump when the way prefixes are computed or stored changes.
PREFIX_CACHE_VERSION = b"pmmrec-prefix-cache-3"
TEXT, VISION = SLOT["text"].name, SLOT["vision"].name  # the named views (text_prefix, image_prefix)


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


@dataclass
class PrefixStore:
    """One modality's cached prefixes: dense rows by catalogue index, or jagged real tokens with their offsets."""

    data: torch.Tensor | np.ndarray
    offsets: np.ndarray | None = None  # jagged: item r's tokens at rows offsets[r]:offsets[r + 1]
    mask_name: str | None = None  # jagged: the input that marks real tokens (`attention_mask`)
    skips_reading: bool = False  # dense and read from storage: batches leave the modality's inputs out


class FrozenPrefixCache:
    """Per-item outputs of the frozen encoder bottoms, one store per modality; rows by catalogue index (0 = padding)."""

    def __init__(self, stores: dict[str, PrefixStore], device: torch.device, key: str) -> None:
        self.stores = stores
        self.device = device
        self.key = key
        self._collator: BatchCollator | None = None
        self._num_items = 0

    @property
    def cached_modalities(self) -> frozenset[str]:
        """The modalities whose prefixes this cache holds."""
        return frozenset(self.stores)

    @property
    def skipped_inputs(self) -> frozenset[str]:
        """Modalities whose inputs batches may leave out: this cache stands in for them (images)."""
        return frozenset(modality for modality, store in self.stores.items() if store.skips_reading)

    # ---- the named views of the text and image stores ---------------------------------------------------------

    @property
    def caches_text(self) -> bool:
        return TEXT in self.stores

    @property
    def caches_image(self) -> bool:
        return VISION in self.stores

    @property
    def text_prefix(self) -> torch.Tensor | np.ndarray | None:
        """Jagged: [total real tokens, hidden]; rows of item r from text_offsets."""
        return self.stores[TEXT].data if TEXT in self.stores else None

    @property
    def text_offsets(self) -> np.ndarray | None:
        return self.stores[TEXT].offsets if TEXT in self.stores else None

    @property
    def image_prefix(self) -> torch.Tensor | np.ndarray | None:
        return self.stores[VISION].data if VISION in self.stores else None

    def text_rows(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cached text prefixes of `items` laid out as their token mask [U, W] says: [U, W, hidden], zero padding."""
        return self._jagged_rows(self.stores[TEXT], items, mask)

    # ---- building ---------------------------------------------------------------------------------------------

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
        encoders = {modality: e for modality, e in model.encoders().items() if e.has_frozen_prefix}
        if not encoders:
            return None
        stores: dict[str, PrefixStore] = {}
        labels = []
        for modality, encoder in encoders.items():
            reader = collator.inputs.get(modality)
            if reader is None:
                raise ConfigError(f"the collator has no {modality} inputs for the model's {modality} encoder")
            key = _state_digest(encoder.frozen_modules(), _config_digest(encoder) + reader.digest())
            where = {"batch_size": batch_size, "memory_budget": memory_budget, "cache_dir": cache_dir}
            label = reader.cache_label
            token_mask = reader.token_mask()
            if reader.mask_name is not None and token_mask is not None:
                offsets = jagged_offsets(token_mask)
                data = _compute_jagged(encoder, collator, modality, reader.mask_name, offsets, device, label, key, **where)
                stores[modality] = PrefixStore(data, offsets, reader.mask_name)
            else:
                data = _compute_dense(encoder, collator, modality, num_items, device, label, key, **where)
                stores[modality] = PrefixStore(data, skips_reading=reader.reads_storage)
            labels.append(label)
        cache = cls(stores, device, "+".join(labels))
        cache._collator = collator
        cache._num_items = num_items
        return cache

    # ---- reading ----------------------------------------------------------------------------------------------

    def _rows(self, store: torch.Tensor | np.ndarray, items: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(store, np.ndarray):
            rows = torch.from_numpy(np.ascontiguousarray(store[items.cpu().numpy()]))
        else:
            rows = store[items.to(store.device)]
        return rows.to(self.device, dtype=dtype, non_blocking=True)

    def _jagged_rows(self, store: PrefixStore, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Jagged prefixes of `items` laid out as their token mask [U, W] says: [U, W, hidden], zero padding."""
        assert store.offsets is not None
        mask = mask.to(torch.bool)
        rows = jagged_rows(store.offsets, items.cpu().numpy())
        if isinstance(store.data, np.ndarray):
            packed = torch.from_numpy(np.ascontiguousarray(store.data[rows]))
        else:
            packed = store.data[torch.from_numpy(rows).to(store.data.device)]
        packed = packed.to(self.device, dtype=torch.float32, non_blocking=True)
        flat = mask.to(self.device).reshape(-1).nonzero().squeeze(1)
        if flat.numel() != packed.shape[0]:
            raise ValueError("the token mask does not match the cached token counts (a cache built for other inputs)")
        out = packed.new_zeros(mask.shape[0] * mask.shape[1], packed.shape[1])
        return out.index_copy(0, flat, packed).view(mask.shape[0], mask.shape[1], -1)

    def _prefix(self, modality: str, items: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One modality's cached prefixes of `items` (jagged ones laid out by the inputs' token mask)."""
        store = self.stores[modality]
        if store.mask_name is None:
            return self._rows(store.data, items, torch.float32)
        return self._jagged_rows(store, items, inputs[store.mask_name])

    def lookup(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """Cached prefixes of the batch's distinct items, by modality (an encoder without a cache has none)."""
        prefixes = {}
        for modality, store in self.stores.items():
            inputs = batch.inputs.get(modality, {})
            if store.mask_name is not None:
                inputs = {store.mask_name: _trim(inputs[store.mask_name].cpu())}
            prefixes[modality] = self._prefix(modality, batch.unique_items, inputs)
        return prefixes

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
                items, embeddings = self.encode_chunk(model, order[start : start + batch_size])
                table[items] = embeddings.float()
        return table

    def encode_chunk(self, model: PMMRec, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(catalogue indices on the device, their embeddings) of one chunk, from cached prefixes."""
        assert self._collator is not None
        batch = self._collator.collate_items(indices, skip=self.skipped_inputs)
        items = batch.items
        prefixes = {}
        for modality, store in self.stores.items():
            inputs = batch.inputs.get(modality, {})
            if store.mask_name is not None:
                mask = _trim(inputs[store.mask_name])
                inputs = batch.inputs[modality] = {name: tensor[:, : mask.shape[1]] for name, tensor in inputs.items()}
            prefixes[modality] = self._prefix(modality, items, inputs)
        batch = batch.to(self.device)
        encoded = model.embed_items(inputs=batch.inputs, prefixes=prefixes, item_indices=batch.items)
        return batch.items, encoded.embeddings


def catalogue_order(collator: BatchCollator, num_items: int) -> list[int]:
    """Catalogue indices 1..N, fewest real tokens first (catalogue order without token masks): chunks of similar
    length pad little (in the fusion too; the text encoder itself computes real tokens only)."""
    lengths = collator.item_lengths()
    if lengths is None:
        return list(range(1, num_items + 1))
    return (torch.argsort(lengths[1 : num_items + 1], stable=True) + 1).tolist()


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


def _config_digest(encoder: ItemEncoder) -> bytes:
    """The encoder's architecture and preprocessing (backbone config, image size and normalisation, depth)."""
    payload = json.dumps(encoder.config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{type(encoder).__name__}:{payload}".encode()).digest()


@torch.inference_mode()
def _compute_jagged(
    encoder: ItemEncoder,
    collator: BatchCollator,
    modality: str,
    mask_name: str,
    offsets: np.ndarray,
    device: torch.device,
    label: str,
    key: str,
    *,
    batch_size: int,
    memory_budget: int,
    cache_dir: Path | None,
) -> torch.Tensor | np.ndarray:
    """The jagged store: the frozen prefix of every item's real tokens, in chunks of similar length."""
    num_items = len(offsets) - 2
    folder = cache_dir or cache_root() / "prefix"
    path = folder / f"{label}-{key[:32]}"
    reused = _reuse(Path(str(path) + ".npy"), int(offsets[-1]))
    if reused is not None:
        return reused
    store: torch.Tensor | np.ndarray | None = None
    tmp: str | None = None
    order = catalogue_order(collator, num_items)
    for start in range(0, num_items, batch_size):
        indices = order[start : start + batch_size]
        inputs = collator.collate_items(indices, only={modality}).inputs[modality]
        mask = _trim(inputs[mask_name]).to(torch.bool)
        trimmed = {name: tensor[:, : mask.shape[1]].to(device) for name, tensor in inputs.items()}
        trimmed[mask_name] = mask.to(device)
        out = encoder.frozen_prefix_of(trimmed)
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


@torch.inference_mode()
def _compute_dense(
    encoder: ItemEncoder,
    collator: BatchCollator,
    modality: str,
    num_items: int,
    device: torch.device,
    label: str,
    key: str,
    *,
    batch_size: int,
    memory_budget: int,
    cache_dir: Path | None,
) -> torch.Tensor | np.ndarray:
    """A dense store [N+1, ...] of the frozen prefix per item (image prefixes: every item has the same token count)."""
    folder = cache_dir or cache_root() / "prefix"
    path = folder / f"{label}-{key[:32]}"
    reused = _reuse(Path(str(path) + ".npy"), num_items + 1)
    if reused is not None:
        return reused
    store: torch.Tensor | np.ndarray | None = None
    tmp: str | None = None
    for start in range(0, num_items, batch_size):
        indices = list(range(start + 1, min(start + batch_size, num_items) + 1))
        batch: ItemBatch = collator.collate_items(indices, only={modality}).to(device)
        out = encoder.frozen_prefix_of(batch.inputs[modality]).float()
        if store is None:
            shape = (num_items + 1, *out.shape[1:])
            store, tmp = _allocate(shape, memory_budget, folder, path, device)
        if isinstance(store, np.ndarray):
            store[indices] = out.cpu().numpy().astype(np.float16)
        else:
            store[torch.as_tensor(indices, device=device)] = out
    assert store is not None
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


