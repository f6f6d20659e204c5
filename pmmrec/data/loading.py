"""Training-side loading: a per-tokenizer token cache, sequence datasets and a collator of distinct items.

Text is tokenised once per (catalogue, tokenizer, max_tokens) with the text encoder's own preprocessor and cached as
int32 safetensors, never per batch; images are prepared by the vision encoder's preprocessor.
Batches carry user sequences left-padded with 0 (most recent item in the last column), masks, and the sorted list
of distinct items in the batch with each slot's index into it, so an item encoder runs once per distinct item.
Datasets and collator hold only picklable state (the image LMDB opens lazily in each worker process), so they work
with DataLoader workers (fork or spawn) and with DistributedSampler.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from pmmrec.components.inputs import ImagePreprocessor, TextPreprocessor
from pmmrec.data.image_store import ImageStore
from pmmrec.data.pixel_cache import DEFAULT_PIXEL_CACHE_BYTES, PixelCache
from pmmrec.data.ragged import RaggedArray
from pmmrec.data.windows import WINDOW_SCHEMES, TrainSequences, left_pad, tile_ends
from pmmrec.errors import ConfigError, DatasetError
from pmmrec.fileio import atomic_file

__all__ = [
    "WINDOW_SCHEMES",
    "BatchCollator",
    "EvalBatch",
    "EvalSample",
    "EvalSequences",
    "ImageStore",
    "ItemBatch",
    "SequenceBatch",
    "TrainSequences",
    "tile_ends",
    "tokenize_catalogue",
]

TOKEN_CACHE_VERSION = "1"
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")

BatchT = TypeVar("BatchT", bound="_TensorBundle")


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _read_token_cache(path: Path, expected: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cached tensors when the file exists, is intact and was made for exactly these inputs; else None."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != expected:
                return None
            input_ids = handle.get_tensor("input_ids")
            attention_mask = handle.get_tensor("attention_mask")
    except Exception:  # a truncated or foreign file is simply rebuilt
        return None
    rows = int(expected["num_items"]) + 1
    width = int(expected["max_tokens"])
    if input_ids.shape != (rows, width) or attention_mask.shape != (rows, width) or input_ids.dtype != torch.int32:
        return None
    return input_ids, attention_mask


def tokenize_catalogue(
    texts: list[str], preprocessor: TextPreprocessor, cache_dir: Path | None, cache_key: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (int32 [N+1, T]) and attention mask (int8 [N+1, T]) of every catalogue text, row 0 = padding item.

    Rows come from the text encoder's own preprocessor (its padding row holds CLS with mask 1, so encoders never
    see an all-masked row). With `cache_dir`, the result is stored as safetensors named by `cache_key` (default:
    the preprocessor's fingerprint of tokenizer and width) plus a digest of the texts, and reused when both match;
    writes are atomic.
    """
    max_tokens = preprocessor.max_tokens
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
    cache_key = cache_key if cache_key is not None else preprocessor.fingerprint()
    texts_digest = _texts_digest(texts)
    expected = {
        "cache_version": TOKEN_CACHE_VERSION,
        "cache_key": cache_key,
        "texts_sha256": texts_digest,
        "num_items": str(len(texts)),
        "max_tokens": str(max_tokens),
    }
    path: Path | None = None
    if cache_dir is not None:
        safe_key = _UNSAFE_FILENAME.sub("_", cache_key)[:80] or "tokens"
        path = Path(cache_dir) / f"tokens-{safe_key}-{texts_digest[:16]}-{max_tokens}.safetensors"
        cached = _read_token_cache(path, expected) if path.is_file() else None
        if cached is not None:
            return cached
    pad_ids, pad_mask = preprocessor.padding_row()
    ids, mask = preprocessor(texts)
    input_ids = torch.cat([pad_ids, ids])
    attention_mask = torch.cat([pad_mask, mask]).to(torch.int8)
    if path is not None:
        payload = safetensors_save({"input_ids": input_ids, "attention_mask": attention_mask}, metadata=expected)
        with atomic_file(path, mode="wb") as handle:
            handle.write(payload)
    return input_ids, attention_mask


def _rows(sequences: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """A RaggedArray as it is (no Python object per user: cheap to pickle into workers), else int64 arrays."""
    if isinstance(sequences, RaggedArray):
        return sequences
    return [np.asarray(sequence, dtype=np.int64) for sequence in sequences]


class EvalSample(NamedTuple):
    """One evaluation user: left-padded window of the history, the target, the full history for exclusion."""

    window: np.ndarray
    target: int
    history: np.ndarray


class EvalSequences(torch.utils.data.Dataset):
    """Per user, the last max_len history items (left-padded), the target and the full history."""

    def __init__(self, histories: Sequence[np.ndarray], targets: np.ndarray | Sequence[int], max_len: int) -> None:
        if max_len < 1:
            raise ConfigError(f"max_len must be positive, got {max_len}")
        if len(histories) != len(targets):
            raise ConfigError(f"{len(histories)} histories but {len(targets)} targets")
        self.histories = _rows(histories)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.histories)

    def __getitem__(self, index: int) -> EvalSample:
        history = self.histories[index]
        return EvalSample(left_pad(history, self.max_len), int(self.targets[index]), history)


class _TensorBundle:
    """Device moves and pinning for dataclasses whose fields are tensors or None."""

    def to(self: BatchT, device: torch.device | str, non_blocking: bool = False) -> BatchT:
        """A copy with every tensor on `device`."""
        values = {}
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            values[spec.name] = (
                value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
            )
        return type(self)(**values)

    def pin_memory(self: BatchT) -> BatchT:
        """A copy with every tensor in pinned memory (DataLoader(pin_memory=True) calls this)."""
        values = {}
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            values[spec.name] = value.pin_memory() if isinstance(value, torch.Tensor) else value
        return type(self)(**values)


@dataclass
class SequenceBatch(_TensorBundle):
    """A batch of user sequences and the features of its distinct items.

    item_seq: catalogue indices [B, S], left-padded with 0; seq_mask: True on real items;
    unique_items: sorted distinct non-padding indices [U] (every known item when the collator lists all known items
    as candidates); slot_index: position of each slot's item in
    unique_items [B, S] (0 on padding, use seq_mask); text_ids/text_mask: token rows [U, T] of unique_items;
    pixel_values: uint8 [U, 3, H, W], un-normalised (zeros for an item without an image).
    """

    item_seq: torch.Tensor
    seq_mask: torch.Tensor
    unique_items: torch.Tensor
    slot_index: torch.Tensor
    text_ids: torch.Tensor | None
    text_mask: torch.Tensor | None
    pixel_values: torch.Tensor | None


@dataclass
class EvalBatch(SequenceBatch):
    """SequenceBatch plus targets [B] and each user's full history as CSR (sorted distinct items per user).

    User b's history items are history_items[history_indptr[b]:history_indptr[b + 1]].
    """

    targets: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor


@dataclass
class ItemBatch(_TensorBundle):
    """Features of a list of catalogue items (for encoding the whole catalogue in chunks)."""

    items: torch.Tensor
    text_ids: torch.Tensor | None
    text_mask: torch.Tensor | None
    pixel_values: torch.Tensor | None


def _stack_left_padded(windows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack windows, left-padding shorter ones with 0 to the longest."""
    length = max(len(window) for window in windows)
    return np.stack([left_pad(window, length) for window in windows])


class BatchCollator:
    """Builds SequenceBatch (from TrainSequences samples) or EvalBatch (from EvalSequences samples).

    item_ids: catalogue item ids (index i + 1 -> item_ids[i]), used to look images up;
    text_ids / text_mask: the token cache from tokenize_catalogue, or None without text;
    image_store: an ImageStore or None without images; image_size: side of the returned square images;
    pixel_cache_bytes: budget of the per-process cache of decoded images (0: decode every time);
    all_items_as_candidates: training batches list every catalogue item as a candidate (the full-softmax loss), not
    only their own; include_images: False when a frozen-prefix cache already holds every image input;
    known_items: the sorted catalogue indices known at training time, the full softmax's only candidates (None: the
    whole catalogue 1..N; never-trained items must not be negatives, issue 24, so training sets it).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        text_ids: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        image_store: ImageStore | None,
        image_size: int = 224,
        *,
        pixel_cache_bytes: int = DEFAULT_PIXEL_CACHE_BYTES,
        all_items_as_candidates: bool = False,
        include_images: bool = True,
        known_items: np.ndarray | None = None,
    ) -> None:
        if (text_ids is None) != (text_mask is None):
            raise ConfigError("text_ids and text_mask must both be given or both be None")
        if text_ids is not None and text_ids.shape[0] != len(item_ids) + 1:
            raise ConfigError(
                f"token cache has {text_ids.shape[0]} rows, expected {len(item_ids) + 1} (items + padding)"
            )
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.item_ids = list(item_ids)
        self.text_ids = text_ids
        self.text_mask = text_mask
        self.image_store = image_store
        self.image_preprocessor = ImagePreprocessor(image_size)
        self.include_images = include_images
        self.all_items_as_candidates = all_items_as_candidates
        self.known_items: np.ndarray | None = known_items
        self.pixel_cache = PixelCache(pixel_cache_bytes)  # decoded images of popular items, per process

    def with_options(
        self, *, all_items_as_candidates: bool, include_images: bool, known_items: np.ndarray | None = None
    ) -> BatchCollator:
        """A collator over the same catalogue inputs (token rows, image store, decoded-image cache) whose batches
        follow these options; this one is left as it is."""
        changed = copy.copy(self)
        changed.all_items_as_candidates = all_items_as_candidates
        changed.include_images = include_images
        changed.known_items = known_items
        return changed

    @property
    def image_size(self) -> int:
        """Side of the square images batches carry."""
        return self.image_preprocessor.image_size

    def _load_pixels(self, indices: list[int]) -> list[np.ndarray | None]:
        """Prepared images (S x S x 3) of catalogue indices, read from the LMDB in one transaction."""
        assert self.image_store is not None
        images = self.image_store.get_many([self.item_ids[index - 1] for index in indices])
        return [None if image is None else self.image_preprocessor.pixels(image) for image in images]

    def _image(self, index: int) -> np.ndarray | None:
        return self.image_store.get(self.item_ids[index - 1]) if self.image_store is not None else None

    def item_features(
        self, items: torch.Tensor, include_images: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(text ids, text mask, pixel values) of the given catalogue indices, each with one row per index.

        include_images=False skips the LMDB reads (for encoders whose image inputs are already cached).
        """
        text_ids = self.text_ids[items] if self.text_ids is not None else None
        text_mask = self.text_mask[items] if self.text_mask is not None else None
        pixel_values = None
        if self.image_store is not None and include_images and self.include_images:
            indices = items.tolist()
            if any(index < 1 or index > len(self.item_ids) for index in indices):
                raise DatasetError(f"catalogue index out of range 1..{len(self.item_ids)}")
            pixel_values = self.image_preprocessor(self.pixel_cache.get_many(indices, self._load_pixels))
        return text_ids, text_mask, pixel_values

    def collate_items(self, indices: Sequence[int], include_images: bool = True) -> ItemBatch:
        """Features of a chunk of catalogue indices; usable as a DataLoader collate_fn over range(1, N + 1)."""
        items = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        text_ids, text_mask, pixel_values = self.item_features(items, include_images)
        return ItemBatch(items=items, text_ids=text_ids, text_mask=text_mask, pixel_values=pixel_values)

    def __call__(self, samples: Sequence[np.ndarray | EvalSample]) -> SequenceBatch:
        return self._collate(samples, with_features=True)

    def sequences_only(self, samples: Sequence[np.ndarray | EvalSample]) -> SequenceBatch:
        """A batch without item features (text/pixels None): for scoring against a precomputed item table."""
        return self._collate(samples, with_features=False)

    def _collate(self, samples: Sequence[np.ndarray | EvalSample], with_features: bool) -> SequenceBatch:
        if not samples:
            raise ConfigError("cannot collate an empty batch")
        is_eval = isinstance(samples[0], EvalSample)
        windows = [sample.window if isinstance(sample, EvalSample) else sample for sample in samples]
        item_seq = _stack_left_padded(windows)
        seq_mask = item_seq > 0
        slot_index = np.zeros_like(item_seq)
        if self.all_items_as_candidates and not is_eval:
            known = self.known_items
            unique_items = np.arange(1, len(self.item_ids) + 1, dtype=np.int64) if known is None else known
            items = item_seq[seq_mask]
            slot_index[seq_mask] = positions = np.searchsorted(unique_items, items)
            if len(items) and (
                not len(unique_items)
                or not np.array_equal(unique_items[np.minimum(positions, len(unique_items) - 1)], items)
            ):
                raise ConfigError("a training sequence holds an item that is not in the collator's known_items")
        else:
            unique_items, inverse = np.unique(item_seq[seq_mask], return_inverse=True)
            slot_index[seq_mask] = inverse.reshape(-1)
        unique_tensor = torch.from_numpy(unique_items.astype(np.int64))
        text_ids = text_mask = pixel_values = None
        if with_features:
            text_ids, text_mask, pixel_values = self.item_features(unique_tensor)
        common = {
            "item_seq": torch.from_numpy(item_seq),
            "seq_mask": torch.from_numpy(seq_mask),
            "unique_items": unique_tensor,
            "slot_index": torch.from_numpy(slot_index),
            "text_ids": text_ids,
            "text_mask": text_mask,
            "pixel_values": pixel_values,
        }
        if not is_eval:
            return SequenceBatch(**common)
        histories = [np.unique(sample.history) for sample in samples]  # type: ignore[union-attr]
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(history) for history in histories])
        history_items = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        return EvalBatch(
            **common,
            targets=torch.as_tensor([sample.target for sample in samples], dtype=torch.long),  # type: ignore[union-attr]
            history_indptr=torch.from_numpy(indptr),
            history_items=torch.from_numpy(history_items.astype(np.int64)),
        )
