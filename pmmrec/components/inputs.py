"""Turning an item's content into encoder inputs: the one way, owned by the encoders.

`TextEncoder.preprocessor` and `VisionEncoder.preprocessor` return these small, picklable objects; the batch
collator, the catalogue encoder, the frozen-prefix cache and the server all prepare inputs through them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pmmrec.imaging import resize_and_center_crop

_TOKENIZE_CHUNK = 1024


@dataclass(frozen=True)
class TextPreprocessor:
    """Raw item texts -> token ids (int32) and mask (bool), `max_tokens` wide, with the encoder's own tokenizer.

    Texts are passed to the tokenizer unchanged (no lower-casing beyond what the tokenizer itself does).
    """

    tokenizer: Any
    max_tokens: int

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows [N, max_tokens] and their mask for `texts`, tokenised in chunks."""
        pad = self.pad_token_id
        input_ids = torch.full((len(texts), self.max_tokens), pad, dtype=torch.int32)
        mask = torch.zeros((len(texts), self.max_tokens), dtype=torch.bool)
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = list(texts[start : start + _TOKENIZE_CHUNK])
            encoded = self.tokenizer(
                chunk, max_length=self.max_tokens, padding="max_length", truncation=True, return_attention_mask=True
            )
            rows = slice(start, start + len(chunk))
            input_ids[rows] = torch.tensor(encoded["input_ids"], dtype=torch.int32)
            mask[rows] = torch.tensor(encoded["attention_mask"], dtype=torch.bool)
        return input_ids, mask

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if isinstance(pad, int) else 0

    def padding_row(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The padding item's row: one valid position holding CLS (else BOS, else the first special token).

        Encoders therefore never see an all-masked row.
        """
        input_ids = torch.full((1, self.max_tokens), self.pad_token_id, dtype=torch.int32)
        mask = torch.zeros((1, self.max_tokens), dtype=torch.bool)
        input_ids[0, 0] = self._first_token()
        mask[0, 0] = True
        return input_ids, mask

    def _first_token(self) -> int:
        for attribute in ("cls_token_id", "bos_token_id"):
            token = getattr(self.tokenizer, attribute, None)
            if isinstance(token, int):
                return token
        encoded = self.tokenizer("", add_special_tokens=True)["input_ids"]
        return int(encoded[0]) if encoded else self.pad_token_id

    def fingerprint(self) -> str:
        """A hash of the tokenizer's full definition and the width, so caches never mix tokenizers."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256(f"{text}|max_tokens={self.max_tokens}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ImagePreprocessor:
    """Images -> uint8 pixels [N, 3, S, S]: shorter side to S (bicubic), centre crop; normalisation is the encoder's.

    A missing image (None) becomes a black square, as an item without a picture is encoded.
    """

    image_size: int

    def pixels(self, image: Image.Image | np.ndarray | None) -> np.ndarray:
        """One image as an S x S x 3 uint8 array."""
        size = self.image_size
        if image is None:
            return np.zeros((size, size, 3), dtype=np.uint8)
        if isinstance(image, np.ndarray):
            if image.shape[:2] == (size, size) and image.dtype == np.uint8:
                return image
            image = Image.fromarray(image)
        return np.asarray(resize_and_center_crop(image, size), dtype=np.uint8)

    def __call__(self, images: Sequence[Image.Image | np.ndarray | None]) -> torch.Tensor:
        """A batch of images as uint8 [N, 3, S, S]."""
        if not images:
            return torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        stacked = np.stack([self.pixels(image) for image in images])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
