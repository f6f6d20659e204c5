"""Live items into a dataset: a new dataset folder holding a dataset's items and users plus a server's live items.

The source dataset is never modified; the new folder is written atomically and validated by `write_dataset`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pmmrec.data import ImageSource, load_dataset, resize_and_center_crop, write_dataset
from pmmrec.data.dataset import validate_identifier, validate_text
from pmmrec.errors import DatasetError
from pmmrec.serving.store import ITEMS_DB, ItemStore, LiveItem, SQLiteItemStore
from pmmrec.serving.stores import open_store


def _stored_items(state_dir: Path | str | None, store_url: str | None) -> tuple[list[LiveItem], str]:
    store: ItemStore | None
    if store_url:
        store = open_store(None, store_url)
    else:
        if state_dir is None:
            raise DatasetError("merge_live_items: give a state folder or a store URL")
        path = Path(state_dir) / ITEMS_DB
        if not path.is_file():
            raise DatasetError(f"{state_dir}: no {ITEMS_DB}; not a pmmrec serve state folder (see --state)")
        store = SQLiteItemStore(path)
    assert store is not None
    try:
        return store.items_after(0, ""), store.location
    finally:
        store.close()


def _pixels(item: LiveItem, size: int) -> np.ndarray | None:
    """The live item's image resized and centre-cropped to the dataset's size (as the dataset builder does)."""
    if item.image is None:
        return None
    try:
        picture = ImageOps.exif_transpose(Image.open(io.BytesIO(item.image))).convert("RGB")
    except Exception as exc:  # stored images were validated when added; an unreadable one is reported
        raise DatasetError(f"live item {item.item_id!r}: its stored image cannot be decoded ({exc})") from None
    return np.asarray(resize_and_center_crop(picture, size), dtype=np.uint8)


def merge_live_items(
    state_dir: Path | str | None,
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    store_url: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `out_dir`: the dataset at `dataset_dir` with the live items of a server's store appended.

    Live items come from `state_dir`'s items.sqlite3 (or `store_url`, a postgresql:// URL), in the order they were
    added. A live item whose id is already in the dataset with the same text is skipped (merged before); with
    another text the merge is refused, naming the ids. With images in the dataset, live items' images are resized to
    its image size and stored; items without one are listed in `items_without_images`. A dataset without images
    stays without: live images are then left out (counted in the answer). Answers counts and the output path.
    """
    dataset = load_dataset(dataset_dir)
    live, location = _stored_items(state_dir, store_url)
    known = dict(zip(dataset.item_ids, dataset.item_texts, strict=True))
    clashes = [item.item_id for item in live if item.item_id in known and known[item.item_id] != item.text]
    if clashes:
        shown = ", ".join(repr(item_id) for item_id in clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise DatasetError(f"{len(clashes)} live item ids are in {dataset_dir} with another text: {shown}")
    new = [item for item in live if item.item_id not in known]
    for item in new:
        validate_identifier(item.item_id, "item id", f"live item {item.item_id!r}")
        validate_text(item.text, f"live item {item.item_id!r}")
    images = None
    dropped = 0
    if dataset.images_path is not None:
        size = int(dataset.info.get("image_size") or 224)
        store = dataset.image_store()
        by_id = {item.item_id: item for item in new}

        def fetch(item_id: str) -> np.ndarray | None:
            if item_id in by_id:
                return _pixels(by_id[item_id], size)
            return store.get(item_id) if store is not None else None

        images = ImageSource(
            kind=dataset.image_kind, fetch=fetch, size=size, allow_missing=True, note=dataset.info.get("image_note")
        )
    else:
        dropped = sum(item.image is not None for item in new)
    provenance = dict(dataset.info.get("provenance", {}))
    provenance["merged_live_items"] = {"from": str(dataset.root), "store": location, "items": len(new)}
    out = write_dataset(
        out_dir,
        name=name or dataset.name,
        item_ids=[*dataset.item_ids, *(item.item_id for item in new)],
        item_texts=[*dataset.item_texts, *(item.text for item in new)],
        user_ids=dataset.user_ids,
        user_items=[[dataset.item_ids[int(i) - 1] for i in sequence] for sequence in dataset.sequences],
        provenance=provenance,
        preprocessing=dict(dataset.info.get("preprocessing", {})),
        images=images,
        overwrite=overwrite,
    )
    return {
        "out": str(out),
        "dataset_items": dataset.num_items,
        "live_items": len(live),
        "merged": len(new),
        "already_present": len(live) - len(new),
        "images_left_out": dropped,
    }
