"""Deterministic synthetic datasets in the pmmrec folder format, at any size (for benchmarks/scale.py).

Item texts are 2-12 pseudo-words (syllables, so WordPiece splits them like rare words: 5-40 tokens); users have
3 to 50 interactions (mean about 12) over a popularity-skewed catalogue (p(i) ~ (i + 10)^-0.9); images, when
asked for and when they fit on disk, are 32 x 32 JPEG pictures (a colour per item and a gradient), stored in the
dataset's images.lmdb. The same arguments always give the same bytes. Files are written the streaming way (no
list of a million strings in memory) and dataset.json records their sha256 as `pmmrec data` does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.data.dataset import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    IMAGES_DATA_FILE,
    IMAGES_DIR,
    INFO_FILE,
    ITEMS_FILE,
    SYNTHETIC_IMAGE_NOTE,
    USERS_FILE,
)
from pmmrec.data.image_store import encode_image_value, write_image_lmdb
from pmmrec.fileio import sha256_file, write_json

IMAGE_SIZE = 32
GENERATOR_VERSION = 1
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
_CHUNK = 50_000


def _words(rng: np.random.Generator, count: int) -> list[str]:
    lengths = rng.integers(2, 4, size=count)
    picks = rng.integers(0, len(_SYLLABLES), size=(count, 3))
    return ["".join(_SYLLABLES[p] for p in row[:length]) for row, length in zip(picks, lengths, strict=True)]


def _item_lines(num_items: int, seed: int) -> Iterator[str]:
    rng = np.random.default_rng(seed)
    vocabulary = _words(rng, 5000)
    for start in range(0, num_items, _CHUNK):
        count = min(_CHUNK, num_items - start)
        lengths = rng.integers(2, 13, size=count)
        words = rng.integers(0, len(vocabulary), size=(count, 12))
        for offset in range(count):
            text = " ".join(vocabulary[w] for w in words[offset, : lengths[offset]])
            yield f"i{start + offset + 1}\t{text.capitalize()}\n"


def _user_lines(num_users: int, num_items: int, seed: int) -> Iterator[tuple[str, int]]:
    rng = np.random.default_rng(seed + 1)
    weights = (np.arange(num_items, dtype=np.float64) + 10.0) ** -0.9
    cdf = np.cumsum(weights / weights.sum())
    ids = [f"i{n}" for n in range(1, num_items + 1)]
    for start in range(0, num_users, _CHUNK):
        count = min(_CHUNK, num_users - start)
        lengths = 3 + np.minimum(rng.geometric(1 / 10, size=count) - 1, 47)
        picks = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), num_items - 1)
        position = 0
        for offset in range(count):
            length = int(lengths[offset])
            row = picks[position : position + length]
            position += length
            yield f"u{start + offset + 1}\t{' '.join(ids[k] for k in row)}\n", length


def _images(num_items: int, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(seed + 2)
    ramp = np.linspace(0.4, 1.0, IMAGE_SIZE, dtype=np.float32)
    shade = ramp[:, None, None] * ramp[None, :, None]
    for start in range(0, num_items, _CHUNK):
        count = min(_CHUNK, num_items - start)
        colours = rng.integers(0, 256, size=(count, 1, 1, 3)).astype(np.float32)
        for offset in range(count):
            pixels = (colours[offset] * shade).astype(np.uint8)
            yield f"i{start + offset + 1}", encode_image_value(pixels, "jpeg")


def image_bytes_estimate(num_items: int) -> int:
    """Disk an images.lmdb of this many items takes (about 1.1 KB per 32 px JPEG, plus LMDB pages)."""
    return num_items * 1400


def synthetic_dataset(root: Path, num_users: int, num_items: int, images: bool, seed: int = 0) -> tuple[Path, bool]:
    """Write (or reuse, when the same parameters made it) a dataset folder; returns (root, whether it has images)."""
    params = {"generator": GENERATOR_VERSION, "users": num_users, "items": num_items, "images": images, "seed": seed}
    info_path = root / INFO_FILE
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("provenance", {}).get("synthetic") == params:
            return root, info["images"] != "none"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    if images and shutil.disk_usage(root).free < 4 * image_bytes_estimate(num_items):
        images = False  # does not fit with room to spare: the dataset goes without images (reported)
        params["images"] = False
    with open(root / ITEMS_FILE, "w", encoding="utf-8") as handle:
        for line in _item_lines(num_items, seed):
            handle.write(line)
    interactions = 0
    with open(root / USERS_FILE, "w", encoding="utf-8") as handle:
        for line, length in _user_lines(num_users, num_items, seed):
            handle.write(line)
            interactions += length
    files: dict[str, Any] = {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
        for name in (ITEMS_FILE, USERS_FILE)
    }
    if images:
        write_image_lmdb(root / IMAGES_DIR, _images(num_items, seed))
        data = root / IMAGES_DATA_FILE
        files[IMAGES_DATA_FILE] = {"sha256": sha256_file(data), "bytes": data.stat().st_size}
    write_json(
        info_path,
        {
            "format": DATASET_FORMAT,
            "format_version": DATASET_FORMAT_VERSION,
            "name": f"synthetic-u{num_users}-i{num_items}",
            "counts": {
                "users": num_users,
                "items": num_items,
                "interactions": interactions,
                "images": num_items if images else 0,
            },
            "images": "synthetic" if images else "none",
            "image_note": SYNTHETIC_IMAGE_NOTE if images else None,
            "image_size": IMAGE_SIZE if images else None,
            "items_without_images": [],
            "provenance": {"source": "benchmarks/_synthetic.py", "synthetic": params},
            "preprocessing": {},
            "files": files,
        },
    )
    return root, images


def folder_bytes(root: Path) -> int:
    """Total size of the files under `root`."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
