"""The text modality's reader: items.tsv's texts, tokenised once per (catalogue, tokenizer, width) and cached.

Text is tokenised with the text encoder's own preprocessor into int32 token rows and an int8 mask, stored as
safetensors under $PMMREC_CACHE/tokens and reused, never per batch; a batch's rows are a look-up in that table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from pmmrec.components import ItemEncoder, ModalityInputs, TextEncoder, TextPreprocessor
from pmmrec.data.readers import ItemInputs, register_reader
from pmmrec.errors import ConfigError
from pmmrec.fileio import atomic_file
from pmmrec.paths import cache_root
from pmmrec.slots import SLOT

if TYPE_CHECKING:
    from pmmrec.data.dataset import Dataset

TOKEN_CACHE_VERSION = "1"
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


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


def tensor_digest(tensor: torch.Tensor) -> bytes:
    """sha256 of a CPU tensor's dtype, shape and bytes (hashed in place: no copy as bytes)."""
    digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    return digest.digest()


@register_reader
class TokenTable(ItemInputs):
    """Every catalogue item's token row and mask [N+1, T] (row 0: the padding item)."""

    modality: ClassVar[str] = SLOT["text"].name
    cache_label: ClassVar[str] = "text"
    table_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    mask_name: ClassVar[str | None] = "attention_mask"

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if input_ids.shape != attention_mask.shape:
            raise ConfigError(f"token ids {tuple(input_ids.shape)} and mask {tuple(attention_mask.shape)} differ")
        self.input_ids = input_ids
        self.attention_mask = attention_mask

    @classmethod
    def provided_by(cls, dataset: Dataset) -> bool:
        return True  # items.tsv gives every item a text

    @classmethod
    def from_dataset(cls, dataset: Dataset, encoder: ItemEncoder) -> TokenTable:
        assert isinstance(encoder, TextEncoder)
        try:
            preprocessor = encoder.preprocessor
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(*tokenize_catalogue(dataset.item_texts, preprocessor, cache_dir=cache_root() / "tokens"))

    def rows(self, items: Sequence[int] | torch.Tensor) -> ModalityInputs:
        index = torch.as_tensor(items, dtype=torch.int64)
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}

    def digest(self) -> bytes:
        return tensor_digest(self.input_ids) + tensor_digest(self.attention_mask.to(torch.bool))

    def tables(self) -> list[torch.Tensor]:
        return [self.input_ids, self.attention_mask]

    def lengths(self) -> torch.Tensor:
        return self.attention_mask.to(torch.int64).sum(dim=1)

    def token_mask(self) -> torch.Tensor:
        return self.attention_mask
