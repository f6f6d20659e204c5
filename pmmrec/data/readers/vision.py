"""The vision modality's reader: images.lmdb, read per batch in one transaction, decoded images of popular items
kept in a bounded per-process cache (`pixel_cache`), resized and cropped by the vision encoder's preprocessor."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from pmmrec.components import ImagePreprocessor, ItemEncoder, ModalityInputs, VisionEncoder
from pmmrec.data.image_store import ImageStore
from pmmrec.data.pixel_cache import DEFAULT_PIXEL_CACHE_BYTES, PixelCache
from pmmrec.data.readers import ItemInputs, register_reader
from pmmrec.errors import ConfigError, DatasetError
from pmmrec.slots import SLOT

if TYPE_CHECKING:
    from pmmrec.data.dataset import Dataset


@register_reader
class ImageInputs(ItemInputs):
    """uint8 pixels [N, 3, S, S] of catalogue items from the image LMDB (zeros for an item without an image)."""

    modality: ClassVar[str] = SLOT["vision"].name
    cache_label: ClassVar[str] = "image"
    reads_storage: ClassVar[bool] = True

    def __init__(
        self,
        item_ids: Sequence[str],
        store: ImageStore,
        image_size: int = 224,
        pixel_cache_bytes: int = DEFAULT_PIXEL_CACHE_BYTES,
    ) -> None:
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.item_ids = list(item_ids)
        self.store = store
        self.preprocessor = ImagePreprocessor(image_size)
        self.pixel_cache = PixelCache(pixel_cache_bytes)  # decoded images of popular items, per process

    @classmethod
    def provided_by(cls, dataset: Dataset) -> bool:
        return dataset.images_path is not None

    @classmethod
    def from_dataset(cls, dataset: Dataset, encoder: ItemEncoder) -> ImageInputs:
        assert isinstance(encoder, VisionEncoder)
        if dataset.images_path is None:
            raise DatasetError(f"{dataset.root}: the model has a vision encoder but the dataset has no images.lmdb")
        return cls(dataset.item_ids, ImageStore(dataset.images_path), image_size=encoder.image_size)

    @property
    def image_size(self) -> int:
        """Side of the square images batches carry."""
        return self.preprocessor.image_size

    def _load_pixels(self, indices: list[int]) -> list[np.ndarray | None]:
        """Prepared images (S x S x 3) of catalogue indices, read from the LMDB in one transaction."""
        images = self.store.get_many([self.item_ids[index - 1] for index in indices])
        return [None if image is None else self.preprocessor.pixels(image) for image in images]

    def rows(self, items: Sequence[int] | torch.Tensor) -> ModalityInputs:
        indices = items.tolist() if isinstance(items, torch.Tensor) else [int(index) for index in items]
        if any(index < 1 or index > len(self.item_ids) for index in indices):
            raise DatasetError(f"catalogue index out of range 1..{len(self.item_ids)}")
        return {"pixel_values": self.preprocessor(self.pixel_cache.get_many(indices, self._load_pixels))}

    def digest(self) -> bytes:
        """Every catalogue item's stored image bytes (or their absence), in catalogue order, and the input size."""
        digest = hashlib.sha256(f"image_size={self.image_size}".encode())
        for item_id in self.item_ids:
            encoded = item_id.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
            value = self.store.get_value(item_id)
            digest.update(b"\x00" if value is None else b"\x01" + len(value).to_bytes(8, "little") + value)
        return digest.digest()
