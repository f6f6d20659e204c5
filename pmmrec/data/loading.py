"""Training-side loading: sequence datasets and a collator of distinct items.

Batches carry user sequences left-padded with 0 (most recent item in the last column), masks, and the sorted list
of distinct items in the batch with each slot's index into it, so an item encoder runs once per distinct item.
Item inputs come from one reader per modality (`pmmrec.data.readers`: text tokenised once per catalogue and
tokenizer, images from the LMDB per batch), each prepared by its encoder's own preprocessor; a batch carries them
as `inputs[modality][name]`. Datasets and collator hold only picklable state (the image LMDB opens lazily in each
worker process), so they work with DataLoader workers (fork or spawn) and with DistributedSampler.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from pmmrec.components import ModalityInputs
from pmmrec.data.image_store import ImageStore
from pmmrec.data.pixel_cache import DEFAULT_PIXEL_CACHE_BYTES
from pmmrec.data.ragged import RaggedArray
from pmmrec.data.readers import ItemInputs, registered_readers
from pmmrec.data.readers.text import TokenTable, tokenize_catalogue
from pmmrec.data.readers.vision import ImageInputs
from pmmrec.data.windows import WINDOW_SCHEMES, TrainSequences, left_pad, tile_ends
from pmmrec.errors import ConfigError
from pmmrec.slots import SLOT

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

BatchT = TypeVar("BatchT", bound="_TensorBundle")


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


TEXT, VISION = SLOT["text"].name, SLOT["vision"].name  # the named views of batches (text_ids, pixel_values)
BatchInputs = dict[str, ModalityInputs]  # modality -> its batch tensors, one row per item


def _map_tensors(value: Any, apply: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `apply` applied to every tensor in it (nested dicts of tensors, e.g. a batch's inputs)."""
    if isinstance(value, torch.Tensor):
        return apply(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, apply) for key, item in value.items()}
    return value


class _TensorBundle:
    """Device moves and pinning for dataclasses whose fields are tensors, None or dicts of them."""

    def to(self: BatchT, device: torch.device | str, non_blocking: bool = False) -> BatchT:
        """A copy with every tensor on `device`."""
        return self._rebuilt(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self: BatchT) -> BatchT:
        """A copy with every tensor in pinned memory (DataLoader(pin_memory=True) calls this)."""
        return self._rebuilt(lambda tensor: tensor.pin_memory())

    def _rebuilt(self: BatchT, apply: Callable[[torch.Tensor], torch.Tensor]) -> BatchT:
        values = {spec.name: _map_tensors(getattr(self, spec.name), apply) for spec in fields(self)}  # type: ignore[arg-type]
        return type(self)(**values)


class _NamedInputs:
    """The text and image inputs of a batch under their names of before (views of `inputs`)."""

    inputs: BatchInputs

    def _input(self, modality: str, name: str) -> torch.Tensor | None:
        return self.inputs.get(modality, {}).get(name)

    @property
    def text_ids(self) -> torch.Tensor | None:
        """Token rows [U, T] of the items (None without text)."""
        return self._input(TEXT, "input_ids")

    @property
    def text_mask(self) -> torch.Tensor | None:
        """Their token mask [U, T]."""
        return self._input(TEXT, "attention_mask")

    @property
    def pixel_values(self) -> torch.Tensor | None:
        """uint8 images [U, 3, H, W], un-normalised (zeros for an item without an image; None without images)."""
        return self._input(VISION, "pixel_values")


@dataclass
class SequenceBatch(_NamedInputs, _TensorBundle):
    """A batch of user sequences and the inputs of its distinct items.

    item_seq: catalogue indices [B, S], left-padded with 0; seq_mask: True on real items;
    unique_items: sorted distinct non-padding indices [U] (every known item when the collator lists all known items
    as candidates); slot_index: position of each slot's item in unique_items [B, S] (0 on padding, use seq_mask);
    inputs: each modality's batch tensors for unique_items (`inputs["text"]["input_ids"]`, also `text_ids`).
    """

    item_seq: torch.Tensor
    seq_mask: torch.Tensor
    unique_items: torch.Tensor
    slot_index: torch.Tensor
    inputs: BatchInputs


@dataclass
class EvalBatch(SequenceBatch):
    """SequenceBatch plus targets [B] and each user's full history as CSR (sorted distinct items per user).

    User b's history items are history_items[history_indptr[b]:history_indptr[b + 1]].
    """

    targets: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor


@dataclass
class ItemBatch(_NamedInputs, _TensorBundle):
    """Inputs of a list of catalogue items (for encoding the whole catalogue in chunks)."""

    items: torch.Tensor
    inputs: BatchInputs


def _stack_left_padded(windows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack windows, left-padding shorter ones with 0 to the longest."""
    length = max(len(window) for window in windows)
    return np.stack([left_pad(window, length) for window in windows])


class BatchCollator:
    """Builds SequenceBatch (from TrainSequences samples) or EvalBatch (from EvalSequences samples).

    item_ids: catalogue item ids (index i + 1 -> item_ids[i]);
    inputs: one reader per modality of the model (`pmmrec.data.readers`; `inference.make_collator` builds them);
    text_ids / text_mask / image_store / image_size / pixel_cache_bytes: the text and image readers given by their
    parts instead (the token cache from tokenize_catalogue, an ImageStore, the side of the returned square images and
    the byte budget of the per-process cache of decoded images, 0: decode every time);
    all_items_as_candidates: training batches list every catalogue item as a candidate (the full-softmax loss), not
    only their own; cached: modalities whose frozen prefixes a cache holds for every item: their inputs are left out
    of batches where reading them costs (images; `include_images=False` says it of the images alone);
    known_items: the sorted catalogue indices known at training time, the full softmax's only candidates (None: the
    whole catalogue 1..N; never-trained items must not be negatives, issue 24, so training sets it).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_store: ImageStore | None = None,
        image_size: int = 224,
        *,
        inputs: Mapping[str, ItemInputs] | None = None,
        pixel_cache_bytes: int = DEFAULT_PIXEL_CACHE_BYTES,
        all_items_as_candidates: bool = False,
        include_images: bool = True,
        cached: Collection[str] = (),
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
        readers: dict[str, ItemInputs] = dict(inputs or {})
        if text_ids is not None and text_mask is not None:
            readers[TEXT] = TokenTable(text_ids, text_mask)
        if image_store is not None:
            readers[VISION] = ImageInputs(self.item_ids, image_store, image_size, pixel_cache_bytes)
        order = list(registered_readers())
        self.inputs: dict[str, ItemInputs] = dict(sorted(readers.items(), key=lambda entry: order.index(entry[0])))
        self.all_items_as_candidates = all_items_as_candidates
        self.cached = frozenset(cached) | (frozenset() if include_images else {VISION})
        self.known_items: np.ndarray | None = known_items

    def with_options(
        self,
        *,
        all_items_as_candidates: bool,
        include_images: bool = True,
        cached: Collection[str] = (),
        known_items: np.ndarray | None = None,
    ) -> BatchCollator:
        """A collator over the same catalogue inputs (the same readers, decoded-image cache included) whose batches
        follow these options; this one is left as it is."""
        changed = copy.copy(self)
        changed.all_items_as_candidates = all_items_as_candidates
        changed.cached = frozenset(cached) | (frozenset() if include_images else {VISION})
        changed.known_items = known_items
        return changed

    # ---- named views of the text and image readers ------------------------------------------------------------

    @property
    def include_images(self) -> bool:
        """Whether batches carry images (False when a frozen-prefix cache holds every image input)."""
        return VISION not in self.cached

    @property
    def text_ids(self) -> torch.Tensor | None:
        """The token table [N+1, T] (None without text)."""
        reader = self.inputs.get(TEXT)
        return reader.tables()[0] if reader is not None else None

    @text_ids.setter
    def text_ids(self, value: torch.Tensor) -> None:
        self._replace_tokens(value, None)

    @property
    def text_mask(self) -> torch.Tensor | None:
        """The token mask table [N+1, T] (None without text)."""
        reader = self.inputs.get(TEXT)
        return reader.tables()[1] if reader is not None else None

    @text_mask.setter
    def text_mask(self, value: torch.Tensor) -> None:
        self._replace_tokens(None, value)

    def _replace_tokens(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """This collator reads another token table (other collators sharing its readers are left as they are)."""
        reader = self.inputs[TEXT]
        assert isinstance(reader, TokenTable)
        replaced = TokenTable(
            input_ids if input_ids is not None else reader.input_ids,
            attention_mask if attention_mask is not None else reader.attention_mask,
        )
        self.inputs = {**self.inputs, TEXT: replaced}

    @property
    def image_store(self) -> ImageStore | None:
        """The image LMDB reader (None without images)."""
        reader = self.inputs.get(VISION)
        return reader.store if isinstance(reader, ImageInputs) else None

    @property
    def image_size(self) -> int:
        """Side of the square images batches carry."""
        reader = self.inputs.get(VISION)
        return reader.image_size if isinstance(reader, ImageInputs) else 224

    # ---- generic over the readers ------------------------------------------------------------------------------

    def input_tables(self) -> list[torch.Tensor | None]:
        """Every registered reader's whole-catalogue tables, in the slot table's order, None for a modality this
        collator has no reader of (what a resumable evaluation's key covers of the item inputs)."""
        tables: list[torch.Tensor | None] = []
        for modality, reader_class in registered_readers().items():
            reader = self.inputs.get(modality)
            tables += reader.tables() if reader is not None else [None] * len(reader_class.table_names)
        return tables

    def item_lengths(self) -> torch.Tensor | None:
        """Real tokens per catalogue row [N+1], summed over the modalities that have token masks (None: none has)."""
        lengths = [length for reader in self.inputs.values() if (length := reader.lengths()) is not None]
        return torch.stack(lengths).sum(dim=0) if lengths else None

    def item_inputs(
        self, items: torch.Tensor, *, skip: Collection[str] = (), only: Collection[str] | None = None
    ) -> BatchInputs:
        """The batch tensors of catalogue indices `items`, by modality: exactly `only`'s when given; else every
        reader's but those in `skip` and those this collator's `cached` leaves out (readers that read storage)."""
        out: BatchInputs = {}
        for modality, reader in self.inputs.items():
            if only is not None:
                if modality in only:
                    out[modality] = reader.rows(items)
            elif modality not in skip and not (modality in self.cached and reader.reads_storage):
                out[modality] = reader.rows(items)
        return out

    def item_features(
        self, items: torch.Tensor, include_images: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(text ids, text mask, pixel values) of the given catalogue indices, each with one row per index (the
        named view of `item_inputs`; include_images=False skips the LMDB reads)."""
        inputs = self.item_inputs(items, skip=() if include_images else {VISION})
        text, vision = inputs.get(TEXT, {}), inputs.get(VISION, {})
        return text.get("input_ids"), text.get("attention_mask"), vision.get("pixel_values")

    def collate_items(
        self,
        indices: Sequence[int],
        include_images: bool = True,
        *,
        skip: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> ItemBatch:
        """Inputs of a chunk of catalogue indices; usable as a DataLoader collate_fn over range(1, N + 1).

        `only` reads just these modalities' inputs, `skip` leaves these out (include_images=False: the images)."""
        items = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        left_out = {*skip, *(() if include_images else (VISION,))}
        return ItemBatch(items=items, inputs=self.item_inputs(items, skip=left_out, only=only))

    def __call__(self, samples: Sequence[np.ndarray | EvalSample]) -> SequenceBatch:
        return self._collate(samples, with_features=True)

    def sequences_only(self, samples: Sequence[np.ndarray | EvalSample]) -> SequenceBatch:
        """A batch without item inputs (empty `inputs`): for scoring against a precomputed item table."""
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
        common = {
            "item_seq": torch.from_numpy(item_seq),
            "seq_mask": torch.from_numpy(seq_mask),
            "unique_items": unique_tensor,
            "slot_index": torch.from_numpy(slot_index),
            "inputs": self.item_inputs(unique_tensor) if with_features else {},
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
