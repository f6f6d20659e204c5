"""Dataset builders: write a dataset folder, build its image LMDB from a folder of files, record images.

Readers live in `dataset` and `image_store`; everything that creates or changes a dataset folder is here, so the
reader side never imports a writer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pmmrec.data.dataset import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    IMAGE_KINDS,
    IMAGES_DATA_FILE,
    IMAGES_DIR,
    INFO_FILE,
    ITEMS_FILE,
    SYNTHETIC_IMAGE_NOTE,
    USERS_FILE,
    _read_info,
    load_dataset,
    read_items_tsv,
    validate_identifier,
    validate_text,
)
from pmmrec.data.image_store import (
    DEFAULT_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    FatalImageError,
    encode_image_value,
    load_image_file,
    write_image_lmdb,
)
from pmmrec.errors import DatasetError, PmmrecError
from pmmrec.fileio import atomic_directory, atomic_file, link_or_copy, sha256_file, write_json
from pmmrec.recovery import recover


@dataclass(frozen=True)
class ImageSource:
    """How a dataset writer obtains item images: `fetch(item_id)` gives HxWx3 uint8 pixels or None."""

    kind: str
    fetch: Callable[[str], np.ndarray | None]
    size: int
    payload_format: str = "png"
    allow_missing: bool = False
    note: str | None = None
    progress: bool = True  # a progress bar while images are encoded (on a terminal)


def _write_bytes(path: Path, payload: bytes) -> None:
    with atomic_file(path, mode="wb") as handle:
        handle.write(payload)


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_dataset(
    out: Path | str,
    *,
    name: str,
    item_ids: Sequence[str],
    item_texts: Sequence[str],
    user_ids: Sequence[str],
    user_items: Sequence[Sequence[str]],
    provenance: dict[str, Any],
    preprocessing: dict[str, Any],
    images: ImageSource | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete dataset folder atomically and validate it before it appears at `out`.

    `user_items` holds each user's item ids, oldest first. An existing `out` is refused unless `overwrite`.
    """
    out = Path(out)
    if len(item_ids) != len(item_texts) or len(user_ids) != len(user_items):
        raise DatasetError("write_dataset: ids and texts (or users and sequences) differ in length")
    item_lines: list[str] = []
    for position, (item_id, text) in enumerate(zip(item_ids, item_texts, strict=True), start=1):
        where = f"{ITEMS_FILE} line {position}"
        validate_identifier(item_id, "item id", where)
        validate_text(text, where)
        item_lines.append(f"{item_id}\t{text.strip()}\n")
    user_lines = [f"{user_id}\t{' '.join(items)}\n" for user_id, items in zip(user_ids, user_items, strict=True)]
    interactions = sum(len(items) for items in user_items)
    try:
        with atomic_directory(out, overwrite=overwrite) as staging:
            _write_bytes(staging / ITEMS_FILE, "".join(item_lines).encode("utf-8"))
            _write_bytes(staging / USERS_FILE, "".join(user_lines).encode("utf-8"))
            files = {ITEMS_FILE: _file_entry(staging / ITEMS_FILE), USERS_FILE: _file_entry(staging / USERS_FILE)}
            info: dict[str, Any] = {
                "format": DATASET_FORMAT,
                "format_version": DATASET_FORMAT_VERSION,
                "name": name,
                "counts": {"users": len(user_ids), "items": len(item_ids), "interactions": interactions, "images": 0},
                "images": "none",
                "image_note": None,
                "image_size": None,
                "items_without_images": [],
                "provenance": provenance,
                "preprocessing": preprocessing,
            }
            if images is not None:
                report = build_image_lmdb_into(
                    staging / IMAGES_DIR,
                    list(item_ids),
                    images.fetch,
                    images.payload_format,
                    images.allow_missing,
                    f"{name} images",
                    progress=images.progress,
                )
                files[IMAGES_DATA_FILE] = _file_entry(staging / IMAGES_DATA_FILE)
                info.update(
                    images=images.kind,
                    image_note=images.note or (SYNTHETIC_IMAGE_NOTE if images.kind == "synthetic" else None),
                    image_size=images.size,
                    items_without_images=report.failed,
                )
                info["counts"]["images"] = len(report.stored)
            info["files"] = files
            write_json(staging / INFO_FILE, info)
            load_dataset(staging, verify_hashes=True)
    except DatasetError:
        raise
    except PmmrecError as exc:  # atomic_directory refusing an existing folder
        raise DatasetError(str(exc)) from exc
    return out


def attach_images(
    root: Path,
    build: Callable[[Path], ImageBuildReport],
    kind: str,
    image_size: int,
    overwrite: bool = False,
) -> ImageBuildReport:
    """Give dataset `root` a freshly built images.lmdb and record it in dataset.json, as ONE folder replacement.

    `build(path)` fills an LMDB at `path`. The dataset is staged beside `root` (its other files hard-linked, or
    copied), validated, then swapped in: a crash leaves the dataset as it was or complete with its images.
    """
    if kind not in IMAGE_KINDS or kind == "none":
        raise DatasetError(f"image kind must be 'synthetic' or 'real', got {kind!r}")
    recover(root)
    info = _read_info(root)
    if os.path.lexists(root / IMAGES_DIR) and not overwrite:
        raise DatasetError(f"{root / IMAGES_DIR} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    try:
        with atomic_directory(root, overwrite=True) as staging:
            for entry in sorted(os.listdir(root)):
                if entry == IMAGES_DIR or entry.startswith("."):
                    continue
                if (root / entry).is_dir():
                    shutil.copytree(root / entry, staging / entry, copy_function=link_or_copy)
                else:
                    link_or_copy(str(root / entry), str(staging / entry))
            report = build(staging / IMAGES_DIR)
            info["images"] = kind
            info["image_note"] = SYNTHETIC_IMAGE_NOTE if kind == "synthetic" else None
            info["image_size"] = image_size
            info["items_without_images"] = list(report.failed)
            info["counts"]["images"] = int(info["counts"]["items"]) - len(report.failed)
            info["files"][IMAGES_DATA_FILE] = _file_entry(staging / IMAGES_DATA_FILE)
            write_json(staging / INFO_FILE, info)
            load_dataset(staging, verify_hashes=True)
    except DatasetError:
        raise
    except PmmrecError as exc:
        raise DatasetError(str(exc)) from exc
    return report


@dataclass
class ImageBuildReport:
    """What an LMDB build stored and what it could not."""

    stored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Item ids without a stored image, in catalogue order of discovery."""
        return self.missing + self.undecodable

    def describe_failures(self, limit: int = 10) -> str:
        """One line naming counts and the first ids of missing and undecodable images."""
        parts = []
        for label, ids in (("missing", self.missing), ("undecodable", self.undecodable)):
            if ids:
                shown = ", ".join(repr(item) for item in ids[:limit])
                more = f", ... ({len(ids) - limit} more)" if len(ids) > limit else ""
                parts.append(f"{len(ids)} {label} ({shown}{more})")
        if self.undecodable:
            parts.append(f"first decoding error: {self.errors.get(self.undecodable[0], 'unknown')}")
        return "; ".join(parts)


def index_image_folder(images_dir: Path) -> dict[str, Path]:
    """Map item id -> image file for files named `<item id>.<jpg|jpeg|png|webp>` (extension case ignored)."""
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: image folder not found")
    found: dict[str, Path] = {}
    for entry in sorted(images_dir.iterdir()):
        if not entry.is_file() or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        stem = entry.stem
        if stem in found:
            raise DatasetError(f"{found[stem]} and {entry} both name item {stem!r}; keep one image per item")
        found[stem] = entry
    return found


def _encode_items(
    item_ids: list[str],
    fetch: Callable[[str], np.ndarray | None],
    payload_format: str,
    report: ImageBuildReport,
    description: str,
    progress: bool = True,
) -> Iterator[tuple[str, bytes]]:
    """Yield encoded values for items whose image `fetch` returns; record missing and undecodable ones."""
    for item_id in tqdm(item_ids, desc=description, unit="img", disable=None if progress else True):
        try:
            pixels = fetch(item_id)
        except FatalImageError:
            raise
        except DatasetError as exc:
            report.undecodable.append(item_id)
            report.errors.setdefault(item_id, str(exc))
            continue
        if pixels is None:
            report.missing.append(item_id)
            continue
        report.stored.append(item_id)
        yield item_id, encode_image_value(pixels, payload_format)


def build_image_lmdb_into(
    path: Path,
    item_ids: list[str],
    fetch: Callable[[str], np.ndarray | None],
    payload_format: str = "png",
    allow_missing: bool = False,
    description: str = "images",
    *,
    progress: bool = True,
) -> ImageBuildReport:
    """Fill a fresh LMDB at `path` with the images `fetch` returns; fail on gaps unless `allow_missing`.

    `fetch(item_id)` returns an HxWx3 uint8 array, None when the item has no image, or raises DatasetError when
    its image cannot be decoded. The caller owns atomicity (this writes inside a staging folder).
    """
    report = ImageBuildReport()
    write_image_lmdb(path, _encode_items(item_ids, fetch, payload_format, report, description, progress))
    if report.failed and not allow_missing:
        raise DatasetError(
            f"{len(report.failed)} of {len(item_ids)} items have no usable image: {report.describe_failures()}; "
            "fix the images or pass --allow-missing"
        )
    return report


def build_image_lmdb(
    items_tsv: Path,
    images_dir: Path,
    out: Path,
    size: int = DEFAULT_IMAGE_SIZE,
    payload_format: str = "png",
    allow_missing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ImageBuildReport:
    """Build `out` (an LMDB folder) from `<item id>.<ext>` files in `images_dir` for the items of `items_tsv`.

    When `out` is `images.lmdb` inside a dataset folder (one with dataset.json), the dataset's dataset.json is
    updated to record the images as real, with their hash and the items left without an image: the LMDB and
    dataset.json are one replacement of the dataset folder, so a crash never leaves one without the other.
    """
    out = Path(out)
    recover(out.parent)  # a dataset folder whose replacement was interrupted is whole again before we look
    item_ids, _texts = read_items_tsv(items_tsv)
    files = index_image_folder(images_dir)

    def fetch(item_id: str) -> np.ndarray | None:
        source = files.get(item_id)
        return None if source is None else load_image_file(source, size)

    if out.name == IMAGES_DIR and (out.parent / INFO_FILE).is_file():

        def build(path: Path) -> ImageBuildReport:
            return build_image_lmdb_into(
                path, item_ids, fetch, payload_format, allow_missing, "build-lmdb", progress=progress
            )

        return attach_images(out.parent, build, kind="real", image_size=size, overwrite=overwrite)
    try:
        with atomic_directory(out, overwrite=overwrite) as staging:
            report = build_image_lmdb_into(
                staging, item_ids, fetch, payload_format, allow_missing, "build-lmdb", progress=progress
            )
    except DatasetError:
        raise
    except PmmrecError as exc:  # atomic_directory refusing an existing folder
        raise DatasetError(str(exc)) from exc
    return report
