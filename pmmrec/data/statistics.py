"""What a dataset folder holds, in figures: counts, lengths, image coverage (`pmmrec data check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.data.dataset import IMAGES_DIR, INFO_FILE, ITEMS_FILE, SYNTHETIC_IMAGE_NOTE, Dataset, load_dataset
from pmmrec.data.image_store import ImageStore
from pmmrec.data.ragged import RaggedArray
from pmmrec.errors import DatasetError


def dataset_statistics(dataset: Dataset) -> dict[str, Any]:
    """Counts, sequence-length summary and image coverage of a loaded dataset (images not decoded)."""
    sequences = RaggedArray.from_rows(dataset.sequences)
    lengths = sequences.lengths
    flat = sequences.flat()
    seen = np.zeros(dataset.num_items + 1, dtype=bool)
    seen[flat] = True
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    repeats = len(flat) - len(np.unique(rows * (dataset.num_items + 1) + flat))  # distinct (user, item) pairs
    declared_missing = set(dataset.info.get("items_without_images", []))
    with_images = 0 if dataset.images_path is None else dataset.num_items - len(declared_missing)
    interactions = int(lengths.sum())
    return {
        "name": dataset.name,
        "users": dataset.num_users,
        "items": dataset.num_items,
        "interactions": interactions,
        "density": interactions / (dataset.num_users * dataset.num_items),
        "sequence_length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "items_without_interactions": int(dataset.num_items - seen[1:].sum()),
        "repeated_interactions": int(repeats),
        "images": dataset.image_kind,
        "items_with_images": with_images,
        "image_share": with_images / dataset.num_items,
        "image_size": dataset.info.get("image_size"),
        "image_note": SYNTHETIC_IMAGE_NOTE if dataset.image_kind == "synthetic" else None,
    }


def check_dataset(root: Path | str) -> dict[str, Any]:
    """Fully validate a dataset folder (hashes, parsers, counts, every image decoded) and return its statistics."""
    dataset = load_dataset(root, verify_hashes=True)
    stats = dataset_statistics(dataset)
    if dataset.images_path is not None:
        store = ImageStore(dataset.images_path)
        declared_missing = set(dataset.info.get("items_without_images", []))
        size = dataset.info.get("image_size")
        for line, item_id in enumerate(dataset.item_ids, start=1):
            if item_id in declared_missing:
                continue
            try:
                pixels = store.get(item_id)
            except DatasetError as exc:
                raise DatasetError(
                    f"{IMAGES_DIR}: undecodable image for item {item_id!r} ({ITEMS_FILE} line {line}): {exc}"
                ) from exc
            if pixels is None:  # coverage was checked by load_dataset; kept for a file changed meanwhile
                raise DatasetError(f"{IMAGES_DIR}: no image for item {item_id!r} ({ITEMS_FILE} line {line})")
            if isinstance(size, int) and pixels.shape[:2] != (size, size):
                raise DatasetError(
                    f"{IMAGES_DIR}: image of item {item_id!r} ({ITEMS_FILE} line {line}) is "
                    f"{pixels.shape[0]}x{pixels.shape[1]}, {INFO_FILE} says {size}x{size}"
                )
    return stats


def format_statistics(stats: dict[str, Any]) -> str:
    """A two-column text table of `stats` as returned by check_dataset; says so when images are synthetic."""
    lengths = stats["sequence_length"]
    images = stats["images"]
    if images == "none":
        image_line = "none"
    else:
        image_line = f"{images.upper() if images == 'synthetic' else images}, {stats['items_with_images']:,} items"
        if stats.get("image_size"):
            image_line += f", {stats['image_size']}x{stats['image_size']}"
    rows = [
        ("dataset", str(stats["name"])),
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("interactions", f"{stats['interactions']:,}"),
        ("density", f"{stats['density']:.4%}"),
        (
            "sequence length",
            f"min {lengths['min']}, median {lengths['median']:g}, mean {lengths['mean']:.1f}, max {lengths['max']}",
        ),
        ("items never interacted", f"{stats['items_without_interactions']:,}"),
        ("repeated interactions", f"{stats['repeated_interactions']:,}"),
        ("images", image_line),
        ("share of items with images", f"{stats['image_share']:.1%}"),
    ]
    width = max(len(label) for label, _value in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    if stats.get("image_note"):
        lines.append(f"note: {stats['image_note']}")
    return "\n".join(lines)
