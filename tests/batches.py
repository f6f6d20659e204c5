"""A small catalogue with images and a batch with duplicates and padding, shared by the speed-path tests.

Used by tests that compare a fast path with the slow one it replaces (issues 5 and 16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tiny
import torch

from pmmrec.components import TextPreprocessor
from pmmrec.data import BatchCollator, ImageStore, SequenceBatch, TrainSequences, tokenize_catalogue
from pmmrec.data.image_store import encode_image_value, write_image_lmdb
from pmmrec.model import PMMRec
from pmmrec.objectives import log_popularity_from_counts
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule

NUM_ITEMS = 24


WORDS = [
    "red",
    "green",
    "blue",
    "quiet",
    "storm",
    "river",
    "night",
    "city",
    "love",
    "war",
    "space",
    "ghost",
    "comedy",
    "drama",
]


CPU = torch.device("cpu")


def texts() -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=1 + i % 9)) + f" ({1950 + i})" for i in range(NUM_ITEMS)]


def write_images(path: Path, item_ids: list[str], changed: str | None = None) -> ImageStore:
    rng = np.random.default_rng(1)
    values = []
    for item_id in item_ids:
        pixels = rng.integers(0, 256, (tiny.CLIP_IMAGE_SIZE, tiny.CLIP_IMAGE_SIZE, 3), dtype=np.uint8)
        if item_id == changed:
            pixels = 255 - pixels
        values.append((item_id, encode_image_value(pixels, "raw")))
    write_image_lmdb(path, values)
    return ImageStore(path)


def collator(tmp_path: Path, images: bool = True) -> BatchCollator:
    item_ids = [f"i{n}" for n in range(1, NUM_ITEMS + 1)]
    ids, mask = tokenize_catalogue(texts(), TextPreprocessor(tiny.minilm_tokenizer(), tiny.TEXT_TOKENS), None, "test")
    store = write_images(tmp_path / "images.lmdb", item_ids) if images else None
    return BatchCollator(item_ids, ids, mask, store, image_size=tiny.CLIP_IMAGE_SIZE)


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    sequences = [rng.integers(1, NUM_ITEMS + 1, size=length) for length in (8, 8, 5, 3, 8, 6)]
    sequences[0][3] = sequences[0][1]  # a duplicate within a user
    return sequences


def batch(collator: BatchCollator) -> SequenceBatch:
    samples = TrainSequences(sequences(), max_len=7)
    batch = collator([samples[i] for i in range(len(samples))])
    assert int(batch.seq_mask.sum()) > len(batch.unique_items), "the batch must hold duplicates"
    assert not bool(batch.seq_mask.all()), "the batch must hold padding"
    return batch


def model(text: bool = True, vision: bool = True) -> PMMRec:
    return PMMRec(
        user=tiny.tiny_user_encoder(max_length=8),
        text=tiny.tiny_text_encoder() if text else None,
        vision=tiny.tiny_clip_encoder() if vision else None,
        fusion=tiny.tiny_fusion() if text and vision else tiny.tiny_text_only(),
    ).eval()


def module(model: PMMRec, nicl: float = 0.0) -> TrainingModule:
    config = TrainConfig.model_validate({"objectives": {"weights": {"rec": 1.0, "nicl": nicl, "nid": 0.0, "rcl": 0.0}}})
    counts = torch.arange(NUM_ITEMS + 1, dtype=torch.float32) % 5 + 1
    return TrainingModule(model, config, log_popularity_from_counts(counts)).eval()
