"""The dataset folder: strict parsers, writer, loader, validator and statistics.

A dataset is a folder holding

- ``items.tsv``: ``item_id<TAB>text`` per line; catalogue order is file order (catalogue index = line position + 1,
  0 is padding);
- ``users.tsv``: ``user_id<TAB>item item item ...`` per line, oldest interaction first;
- ``images.lmdb`` (optional): item images in the format of :mod:`pmmrec.data.image_store`;
- ``dataset.json``: name, counts, provenance, image kind (none, synthetic or real), preprocessing parameters and
  the sha256 of every file.

Files are UTF-8 (a leading BOM and CRLF line ends are accepted). Every error names the file and the line.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.data.image_store import LMDB_DATA_FILE, ImageStore
from pmmrec.data.ragged import RaggedArray, total_length
from pmmrec.errors import ConfigError, DatasetError
from pmmrec.fileio import open_regular_file, sha256_file
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover
from pmmrec.schemas import DatasetInfoFile

DATASET_FORMAT = "pmmrec-dataset"
DATASET_FORMAT_VERSION = 1
ITEMS_FILE = "items.tsv"
USERS_FILE = "users.tsv"
IMAGES_DIR = "images.lmdb"
INFO_FILE = "dataset.json"
IMAGES_DATA_FILE = f"{IMAGES_DIR}/{LMDB_DATA_FILE}"
IMAGE_KINDS: tuple[str, ...] = ("none", "synthetic", "real")
SYNTHETIC_IMAGE_NOTE = (
    "images are SYNTHETIC (drawn by pmmrec from each item's title and genres), not real item pictures; "
    "results obtained with them say nothing about real images"
)
MAX_ID_BYTES = 511  # the longest key an LMDB accepts
_UTF8_BOM = b"\xef\xbb\xbf"
_FORBIDDEN_IN_ID = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# C0 and C1 controls (U+0085 NEL among them) and the Unicode line/paragraph separators: anything a reader of
# items.tsv, or str.splitlines(), could take for a line break.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_INFO_BYTES = 256 << 20  # dataset.json lists the items without images: tens of MB for millions of items


@dataclass
class Dataset:
    """A loaded, validated dataset folder; sequences hold 1-based catalogue indices, oldest first."""

    root: Path
    name: str
    item_ids: list[str]
    item_texts: list[str]
    user_ids: list[str]
    sequences: Sequence[np.ndarray]  # a RaggedArray when read from users.tsv
    images_path: Path | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        """Number of catalogue items (padding index 0 not counted)."""
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        """Number of users (sequences)."""
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        """Total length of all sequences."""
        return total_length(self.sequences)

    @property
    def image_kind(self) -> str:
        """'none', 'synthetic' or 'real', as dataset.json records it."""
        return str(self.info.get("images", "none"))

    def item_index(self) -> dict[str, int]:
        """Map item id -> catalogue index (1-based)."""
        return {item_id: position + 1 for position, item_id in enumerate(self.item_ids)}

    def image_store(self) -> ImageStore | None:
        """A lazily opened reader of the dataset's images, or None without images."""
        return None if self.images_path is None else ImageStore(self.images_path)

    def with_extra_items(self, item_ids: Sequence[str], item_texts: Sequence[str], source: str) -> Dataset:
        """A copy whose catalogue has these items appended after its own (users and images as they are); this
        dataset is left unchanged. Ids already in the catalogue are refused, naming `source`."""
        clashes = sorted(set(item_ids) & set(self.item_ids))
        if clashes:
            raise ConfigError(f"{source}: item ids already in the dataset: {clashes[:5]}")
        return replace(self, item_ids=[*self.item_ids, *item_ids], item_texts=[*self.item_texts, *item_texts])


MAX_LINE_BYTES = 64 * 1024 * 1024  # a users.tsv line of millions of interactions still fits
MAX_TEXT_CHARS = 100_000  # item texts are titles and descriptions; encoders read the first few dozen tokens


def _iter_lines(path: Path, label: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, decoded line) with BOM and CR/LF removed; invalid UTF-8 names the line."""
    try:
        with open_regular_file(path, DatasetError) as handle:
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise DatasetError(f"{label} line {number}: longer than {MAX_LINE_BYTES:,} bytes")
                yield number, _decode_line(raw, number, label)
    except OSError as exc:
        raise DatasetError(f"{label}: cannot read {path} ({exc.strerror or exc})") from exc


def _decode_line(raw: bytes, number: int, label: str) -> str:
    if number == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{label} line {number}: invalid UTF-8 (byte {exc.start} of the line)") from exc


def validate_identifier(value: str, what: str, where: str) -> None:
    """Refuse empty ids, ids holding whitespace or control characters, and ids too long for an LMDB key."""
    if not value:
        raise DatasetError(f"{where}: empty {what}")
    bad = _FORBIDDEN_IN_ID.search(value)
    if bad:
        raise DatasetError(f"{where}: {what} {value!r} contains whitespace or control character {bad.group()!r}")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise DatasetError(f"{where}: {what} is longer than {MAX_ID_BYTES} bytes")


def validate_text(value: str, where: str) -> None:
    """Refuse empty texts and texts holding tabs, line breaks or other control characters."""
    if not value.strip():
        raise DatasetError(f"{where}: empty item text")
    if len(value) > MAX_TEXT_CHARS:
        raise DatasetError(f"{where}: item text is longer than {MAX_TEXT_CHARS:,} characters")
    bad = _FORBIDDEN_IN_TEXT.search(value)
    if bad:
        raise DatasetError(f"{where}: item text contains control character {bad.group()!r}")


def read_items_tsv(path: Path | str, label: str | None = None) -> tuple[list[str], list[str]]:
    """Parse `item_id<TAB>text` lines into (item ids, texts) in file order; errors name file and line."""
    path = Path(path)
    label = label or path.name
    item_ids: list[str] = []
    texts: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in _iter_lines(path, label):
        where = f"{label} line {number}"
        fields = line.split("\t")
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected 2 tab-separated fields (item_id, text), found {len(fields)}")
        item_id, text = fields
        validate_identifier(item_id, "item id", where)
        validate_text(text, where)
        if item_id in first_line:
            raise DatasetError(f"{where}: duplicate item id {item_id!r} (first on line {first_line[item_id]})")
        first_line[item_id] = number
        item_ids.append(item_id)
        texts.append(text.strip())
    if not item_ids:
        raise DatasetError(f"{label}: no items")
    return item_ids, texts


def read_users_tsv(
    path: Path | str, item_index: dict[str, int], label: str | None = None, items_label: str = ITEMS_FILE
) -> tuple[list[str], RaggedArray]:
    """Parse `user_id<TAB>item item ...` lines into (user ids, int64 catalogue-index sequences, oldest first).

    Sequences come back as one RaggedArray (one flat int64 array and offsets), never as a Python object per
    interaction or per user, so memory stays ~8 bytes per interaction at any scale.
    """
    path = Path(path)
    label = label or path.name
    user_ids: list[str] = []
    seen: set[str] = set()
    values = array("q")
    offsets = array("q", [0])
    for number, line in _iter_lines(path, label):
        where = f"{label} line {number}"
        fields = line.split("\t")
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected 2 tab-separated fields (user_id, items), found {len(fields)}")
        user_id, items_field = fields
        validate_identifier(user_id, "user id", where)
        if user_id in seen:
            first = user_ids.index(user_id) + 1  # only on the error path: which line had it first
            raise DatasetError(f"{where}: duplicate user id {user_id!r} (first on line {first})")
        tokens = items_field.split(" ")
        if "" in tokens:
            tokens = [token for token in tokens if token]
        if not tokens:
            raise DatasetError(f"{where}: user {user_id!r} has no items")
        try:
            values.extend([item_index[token] for token in tokens])
        except KeyError as exc:
            raise DatasetError(f"{where}: unknown item id {exc.args[0]!r} (not in {items_label})") from None
        seen.add(user_id)
        user_ids.append(user_id)
        offsets.append(len(values))
    if not user_ids:
        raise DatasetError(f"{label}: no users")
    # Views on the arrays' own buffers (no second copy of every interaction); the arrays stay alive with them.
    flat = np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)
    return user_ids, RaggedArray.from_offsets(flat, np.frombuffer(offsets, dtype=np.int64))


def _read_info(root: Path) -> dict[str, Any]:
    """Parse and type-check dataset.json."""
    path = root / INFO_FILE
    if not os.path.lexists(path):
        raise DatasetError(f"{root}: no {INFO_FILE}; not a pmmrec dataset folder")
    info = read_json_file(path, error=DatasetError, label=INFO_FILE, max_bytes=MAX_INFO_BYTES)
    if not isinstance(info, dict):
        raise DatasetError(f"{INFO_FILE}: top level must be a JSON object")
    if info.get("format_version") != DATASET_FORMAT_VERSION and info.get("format") == DATASET_FORMAT:
        raise DatasetError(
            f"{INFO_FILE}: format_version {info.get('format_version')!r} is not supported "
            f"(this pmmrec reads version {DATASET_FORMAT_VERSION})"
        )
    validate_strictly(DatasetInfoFile, info, INFO_FILE, error=DatasetError)
    return info


def _verify_hashes(root: Path, info: dict[str, Any]) -> None:
    """Compare every file listed in dataset.json with its recorded sha256."""
    files: dict[str, dict[str, Any]] = info["files"]
    required = [ITEMS_FILE, USERS_FILE] + ([IMAGES_DATA_FILE] if info["images"] != "none" else [])
    for name in required:
        if name not in files:
            raise DatasetError(f"{INFO_FILE}: 'files' does not list {name}")
    for name, entry in files.items():
        target = root / name
        if not target.resolve().is_relative_to(root.resolve()):
            raise DatasetError(f"{INFO_FILE}: files[{name!r}] points outside the dataset folder")
        if not target.is_file():
            raise DatasetError(f"{INFO_FILE}: lists {name}, which is missing from {root}")
        size = target.stat().st_size
        if entry.get("bytes") is not None and entry["bytes"] != size:
            raise DatasetError(
                f"{INFO_FILE}: files[{name!r}].bytes is {entry['bytes']:,} but the file has {size:,} bytes "
                "(the file changed after the dataset was written)"
            )
        actual = sha256_file(target)
        if actual != entry["sha256"]:
            raise DatasetError(
                f"{INFO_FILE}: sha256 mismatch for {name}: recorded {entry['sha256'][:16]}..., "
                f"file has {actual[:16]}... (the file changed after the dataset was written)"
            )


def _check_counts(
    info: dict[str, Any], item_ids: list[str], user_ids: list[str], sequences: Sequence[np.ndarray]
) -> None:
    counts = info["counts"]
    actual = {
        "items": (len(item_ids), ITEMS_FILE),
        "users": (len(user_ids), USERS_FILE),
        "interactions": (total_length(sequences), USERS_FILE),
    }
    for key, (value, file_name) in actual.items():
        if counts[key] != value:
            raise DatasetError(f"{INFO_FILE}: counts.{key} is {counts[key]} but {file_name} has {value}")


def _check_image_coverage(root: Path, info: dict[str, Any], item_ids: list[str]) -> Path | None:
    """Every item not declared image-less must have an LMDB entry; return the LMDB path or None."""
    images_dir = root / IMAGES_DIR
    if info["images"] == "none":
        if images_dir.exists():
            raise DatasetError(f"{IMAGES_DIR}: present, but {INFO_FILE} says images: none")
        return None
    if not (images_dir / LMDB_DATA_FILE).is_file():
        raise DatasetError(f"{IMAGES_DIR}: missing, but {INFO_FILE} says images: {info['images']}")
    declared_missing = set(info.get("items_without_images", []))
    known = set(item_ids)
    for item_id in declared_missing:
        if item_id not in known:
            raise DatasetError(f"{INFO_FILE}: items_without_images names {item_id!r}, which is not in {ITEMS_FILE}")
    stored = set(ImageStore(images_dir).keys())
    for line, item_id in enumerate(item_ids, start=1):
        if item_id not in declared_missing and item_id not in stored:
            raise DatasetError(
                f"{IMAGES_DIR}: no image for item {item_id!r} ({ITEMS_FILE} line {line}); "
                f"add it or list it in {INFO_FILE} items_without_images"
            )
    return images_dir


def dataset_fingerprint(dataset: Dataset) -> dict[str, str]:
    """What identifies a dataset's contents: its name and the sha256 of items.tsv and users.tsv (from dataset.json,
    verified when the dataset was loaded). A model folder records it (data_split.json) so that evaluating the model
    on another dataset can say so."""
    files = dataset.info.get("files", {})
    return {
        "name": dataset.name,
        "items_sha256": files.get(ITEMS_FILE, {}).get("sha256", ""),
        "users_sha256": files.get(USERS_FILE, {}).get("sha256", ""),
    }


def describe_other_dataset(trained: dict[str, Any] | None, evaluated: dict[str, str]) -> str | None:
    """One line when a model is used on a dataset other than the one it was trained on (None when the same, or
    when the model does not record its dataset)."""
    if not trained or (
        trained.get("items_sha256") == evaluated["items_sha256"] and trained.get("users_sha256") == evaluated["users_sha256"]
    ):
        return None
    differ = " and ".join(f"{name}.tsv" for name in ("items", "users") if trained.get(f"{name}_sha256") != evaluated[f"{name}_sha256"])
    if trained.get("name") == evaluated["name"]:
        return f"the model was trained on another dataset named {evaluated['name']!r} (its {differ} differ from these)"
    return (
        f"the model was trained on dataset {trained.get('name')!r}, not on {evaluated['name']!r} ({differ} differ): "
        "a transfer evaluation"
    )


def load_dataset(root: Path | str, verify_hashes: bool = True) -> Dataset:
    """Read and validate a dataset folder; raise DatasetError naming the file (and line) at fault."""
    root = Path(root)
    recover(root)  # a replacement interrupted by a crash is finished (or rolled back) first
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    info = _read_info(root)
    item_ids, item_texts = read_items_tsv(root / ITEMS_FILE, ITEMS_FILE)
    index = {item_id: position + 1 for position, item_id in enumerate(item_ids)}
    user_ids, sequences = read_users_tsv(root / USERS_FILE, index, USERS_FILE)
    if verify_hashes:
        _verify_hashes(root, info)
    _check_counts(info, item_ids, user_ids, sequences)
    images_path = _check_image_coverage(root, info, item_ids)
    return Dataset(
        root=root,
        name=info["name"],
        item_ids=item_ids,
        item_texts=item_texts,
        user_ids=user_ids,
        sequences=sequences,
        images_path=images_path,
        info=info,
    )


