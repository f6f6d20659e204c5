"""Frozen-prefix cache: the frozen bottom of each encoder runs once per item, not once per step.

The paper trains only the top 2 layers of 12-layer encoders; their frozen bottom is a fixed function
(frozen modules stay in eval mode), so its output per item is computed once, stored in memory or in a
memory-mapped fp16 file for large catalogues, and each training step runs only the trainable top.
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
from pmmrec.paths import cache_root

# Above this many bytes (fp32 in memory), prefixes go to a memory-mapped fp16 file instead.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Part of every key: bump when the way prefixes are computed or stored changes.
PREFIX_CACHE_VERSION = b"pmmrec-prefix-cache-2"


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
    ) -> None:
        self.text_prefix = text_prefix
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
        if text is not None:
            assert collator.text_ids is not None and collator.text_mask is not None
            lengths = collator.text_mask[1:].to(torch.int64).sum(dim=1)
            text_prefix = _compute(
                lambda batch: _trimmed_text_prefix(text, batch.text_ids, batch.text_mask),
                collator,
                num_items,
                device,
                batch_size,
                memory_budget,
                cache_dir,
                "text",
                _state_digest(
                    text.frozen_modules(),
                    _config_digest(text)
                    + _input_digest(collator.text_ids)
                    + _input_digest(collator.text_mask.to(torch.bool)),
                ),
                order=(torch.argsort(lengths, stable=True) + 1).tolist(),  # similar lengths share a chunk
            )
            key_parts.append("text")
        if vision is not None:
            image_prefix = _compute(
                lambda batch: vision.frozen_prefix(batch.pixel_values),
                collator,
                num_items,
                device,
                batch_size,
                memory_budget,
                cache_dir,
                "image",
                _state_digest(vision.frozen_modules(), _config_digest(vision) + _images_digest(collator)),
            )
            key_parts.append("image")
        cache = cls(text_prefix, image_prefix, device, "+".join(key_parts))
        cache._collator = collator
        cache._num_items = num_items
        return cache

    def _rows(self, store: torch.Tensor | np.ndarray, items: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(store, np.ndarray):
            rows = torch.from_numpy(np.ascontiguousarray(store[items.cpu().numpy()]))
        else:
            rows = store[items.to(store.device)]
        return rows.to(self.device, dtype=dtype, non_blocking=True)

    def lookup(self, batch: SequenceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Cached prefixes of the batch's distinct items (None for an encoder without a cache)."""
        items = batch.unique_items
        text = self._rows(self.text_prefix, items, torch.float32) if self.text_prefix is not None else None
        image = self._rows(self.image_prefix, items, torch.float32) if self.image_prefix is not None else None
        return text, image

    @torch.inference_mode()
    def item_table(self, model: PMMRec, batch_size: int = 256) -> torch.Tensor:
        """The catalogue embedding table, running only the trainable tops on cached prefixes."""
        assert self._collator is not None
        was_training = model.training
        model.eval()
        table = torch.zeros(self._num_items + 1, model.dim, device=self.device)
        for start in range(1, self._num_items + 1, batch_size):
            indices = list(range(start, min(start + batch_size, self._num_items + 1)))
            batch = self._collator.collate_items(indices, include_images=not self.caches_image)
            items = batch.items
            text_prefix = self._rows(self.text_prefix, items, torch.float32) if self.caches_text else None
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
            table[batch.items] = encoded.embeddings.float()
        model.train(was_training)
        return table


def _input_digest(tensor: torch.Tensor | None) -> bytes:
    if tensor is None:
        return b""
    header = f"{tensor.dtype}:{tuple(tensor.shape)}".encode()
    return hashlib.sha256(header + tensor.contiguous().numpy().tobytes()).digest()


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


def _trimmed_text_prefix(encoder: TextEncoder, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Frozen prefix of a chunk run only over the columns some item uses, zero-padded back to the full width.

    Padding positions are masked out of every attention and pooling downstream, so their values never matter.
    """
    width = max(int(text_mask.sum(dim=1).max()), 1) if text_mask.shape[0] else text_mask.shape[1]
    out = encoder.frozen_prefix(text_ids[:, :width], text_mask[:, :width])
    return torch.nn.functional.pad(out, (0, 0, 0, text_mask.shape[1] - width))


@torch.inference_mode()
def _compute(
    run: Callable[[ItemBatch], torch.Tensor],
    collator: BatchCollator,
    num_items: int,
    device: torch.device,
    batch_size: int,
    memory_budget: int,
    cache_dir: Path | None,
    label: str,
    key: str,
    order: list[int] | None = None,
) -> torch.Tensor | np.ndarray:
    folder = cache_dir or cache_root() / "prefix"
    path = folder / f"{label}-{key[:32]}"
    final = Path(str(path) + ".npy")
    if final.is_file():  # same frozen weights, config and inputs: reuse
        try:
            reused = np.load(str(final), mmap_mode="r")
        except (OSError, ValueError):  # unreadable: rebuilt below
            reused = None
        if reused is not None and reused.shape[0] == num_items + 1 and reused.dtype == np.float16:
            return reused
    order = order if order is not None else list(range(1, num_items + 1))
    tmp = f"{path}.{os.getpid()}.tmp.npy"  # per process: concurrent builders never share a half-written file
    store: torch.Tensor | np.ndarray | None = None
    for start in range(0, num_items, batch_size):
        indices = order[start : start + batch_size]
        batch = collator.collate_items(indices, include_images=label == "image").to(device)
        out = run(batch).float()
        if store is None:
            shape = (num_items + 1, *out.shape[1:])
            nbytes = int(np.prod(shape)) * 4
            if nbytes > memory_budget:
                folder.mkdir(parents=True, exist_ok=True)
                memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
                store = memmap
            else:
                store = torch.zeros(shape, dtype=torch.float32, device=device)
        if isinstance(store, np.ndarray):
            store[indices] = out.cpu().numpy().astype(np.float16)
        else:
            store[torch.as_tensor(indices, device=device)] = out
    assert store is not None
    if isinstance(store, np.memmap):
        store.flush()
        del store
        os.replace(tmp, final)
        store = np.load(str(final), mmap_mode="r")
    return store
