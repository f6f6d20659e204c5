"""Image LMDB: a fixed binary value format (never pickle), the resize rule, the builder and a reader.

Every value is a 12-byte header followed by a payload::

    offset  size  field
    0       4     magic b"PMRI"
    4       1     version (1)
    5       1     payload format: 0 = raw RGB pixels (row-major HxWx3), 1 = PNG, 2 = JPEG
    6       2     height  (little-endian uint16)
    8       2     width   (little-endian uint16)
    10      1     channels (3)
    11      1     reserved (0)

Keys are item ids encoded as UTF-8. Images are resized once, when the LMDB is built, the way CLIP's
preprocessing does it: shorter side to `size` with bicubic resampling, then a centre crop of size x size.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pmmrec.errors import DatasetError, PmmrecError
from pmmrec.fileio import atomic_directory
from pmmrec.recovery import recover

IMAGE_MAGIC = b"PMRI"
IMAGE_FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBHHBx")
PAYLOAD_FORMATS: dict[str, int] = {"raw": 0, "png": 1, "jpeg": 2}
PAYLOAD_NAMES: dict[int, str] = {code: name for name, code in PAYLOAD_FORMATS.items()}
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_IMAGE_SIZE = 224
JPEG_QUALITY = 95
LMDB_DATA_FILE = "data.mdb"
_INITIAL_MAP_SIZE = 1 << 28
_ITEMS_PER_TRANSACTION = 256


class FatalImageError(DatasetError):
    """An image problem that must stop a whole build (e.g. a refused pickle), never just mark one item missing."""


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and centre-crop size x size, as CLIP's preprocessing does."""
    if size < 1:
        raise DatasetError(f"image size must be positive, got {size}")
    image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise DatasetError("image has no pixels")
    if width <= height:
        new_width, new_height = size, max(size, round(height * size / width))
    else:
        new_width, new_height = max(size, round(width * size / height)), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = round((new_width - size) / 2.0)
    top = round((new_height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def encode_image_value(pixels: np.ndarray, payload_format: str = "png") -> bytes:
    """Serialise an HxWx3 uint8 array as header + payload (raw pixels, PNG or JPEG)."""
    if payload_format not in PAYLOAD_FORMATS:
        raise DatasetError(f"unknown image payload format {payload_format!r}; use one of {sorted(PAYLOAD_FORMATS)}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DatasetError(f"expected an HxWx3 uint8 image, got shape {pixels.shape} dtype {pixels.dtype}")
    height, width, channels = pixels.shape
    if not (0 < height <= 0xFFFF and 0 < width <= 0xFFFF):
        raise DatasetError(f"image of {height}x{width} pixels does not fit the LMDB header (1..65535 per side)")
    header = HEADER.pack(IMAGE_MAGIC, IMAGE_FORMAT_VERSION, PAYLOAD_FORMATS[payload_format], height, width, channels)
    if payload_format == "raw":
        return header + np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels, mode="RGB")
    if payload_format == "png":
        picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    else:
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return header + buffer.getvalue()


def is_image_value(value: bytes) -> bool:
    """True when `value` starts with this project's image header magic."""
    return value[:4] == IMAGE_MAGIC


def decode_image_value(value: bytes, where: str = "image value") -> np.ndarray:
    """Parse header + payload back into an HxWx3 uint8 array; DatasetError names `where` on any defect."""
    if len(value) < HEADER.size:
        raise DatasetError(f"{where}: {len(value)} bytes is shorter than the {HEADER.size}-byte image header")
    magic, version, payload_code, height, width, channels = HEADER.unpack_from(value)
    if magic != IMAGE_MAGIC:
        raise DatasetError(f"{where}: not a pmmrec image value (magic {magic!r}, expected {IMAGE_MAGIC!r})")
    if version != IMAGE_FORMAT_VERSION:
        raise DatasetError(
            f"{where}: image format version {version} is not supported (expected {IMAGE_FORMAT_VERSION})"
        )
    if payload_code not in PAYLOAD_NAMES:
        raise DatasetError(f"{where}: unknown payload format code {payload_code}")
    if channels != 3 or height == 0 or width == 0:
        raise DatasetError(f"{where}: header says {height}x{width}x{channels}; expected a non-empty RGB image")
    payload = memoryview(value)[HEADER.size :]
    if PAYLOAD_NAMES[payload_code] == "raw":
        expected = height * width * channels
        if len(payload) != expected:
            raise DatasetError(f"{where}: raw payload has {len(payload)} bytes, header implies {expected}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width, channels).copy()
    try:
        with Image.open(io.BytesIO(payload)) as picture:
            picture.load()
            pixels = np.array(picture.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types on corrupt data; all mean "undecodable"
        raise DatasetError(f"{where}: undecodable {PAYLOAD_NAMES[payload_code]} payload ({exc})") from exc
    if pixels.shape != (height, width, channels):
        raise DatasetError(f"{where}: decoded image is {pixels.shape}, header says {(height, width, channels)}")
    return pixels


def load_image_file(path: Path, size: int) -> np.ndarray:
    """Decode an image file, apply its EXIF orientation and resize/crop it to size x size RGB."""
    try:
        with Image.open(path) as picture:
            picture.load()
            oriented = ImageOps.exif_transpose(picture)
            return np.array(resize_and_center_crop(oriented, size), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as exc:  # any decoder failure means the file is unusable
        raise DatasetError(f"{path}: undecodable image ({exc})") from exc


def decode_image_bytes(data: bytes, size: int, where: str) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, WebP, ...) held in memory and resize/crop it to size x size."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            return np.array(resize_and_center_crop(ImageOps.exif_transpose(picture), size), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{where}: undecodable image ({exc})") from exc


def write_image_lmdb(path: Path, images: Iterable[tuple[str, bytes]]) -> int:
    """Write (item id, encoded value) pairs into a fresh LMDB folder at `path`; returns the number written.

    The map grows on demand, and the lock file is removed afterwards because readers open without locking.
    """
    path.mkdir(parents=True, exist_ok=True)
    # meminit: zero the unused part of each page, or uninitialised process memory lands in data.mdb (leaking heap
    # bytes and making two builds of the same images differ).
    env = lmdb.open(str(path), map_size=_INITIAL_MAP_SIZE, subdir=True, lock=True, readahead=False, meminit=True)
    written = 0
    try:
        pending: list[tuple[bytes, bytes]] = []

        def flush() -> None:
            while pending:
                try:
                    with env.begin(write=True) as txn:
                        for key, value in pending:
                            if not txn.put(key, value, overwrite=False):
                                raise DatasetError(f"{path}: item id {key.decode('utf-8')!r} given twice")
                    pending.clear()
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)

        for item_id, value in images:
            pending.append((item_id.encode("utf-8"), value))
            written += 1
            if len(pending) >= _ITEMS_PER_TRANSACTION:
                flush()
        flush()
        env.sync(True)
    finally:
        env.close()
    with contextlib.suppress(FileNotFoundError):
        (path / "lock.mdb").unlink()
    return written


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
) -> Iterator[tuple[str, bytes]]:
    """Yield encoded values for items whose image `fetch` returns; record missing and undecodable ones."""
    for item_id in tqdm(item_ids, desc=description, unit="img", disable=None):
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
) -> ImageBuildReport:
    """Fill a fresh LMDB at `path` with the images `fetch` returns; fail on gaps unless `allow_missing`.

    `fetch(item_id)` returns an HxWx3 uint8 array, None when the item has no image, or raises DatasetError when
    its image cannot be decoded. The caller owns atomicity (this writes inside a staging folder).
    """
    report = ImageBuildReport()
    write_image_lmdb(path, _encode_items(item_ids, fetch, payload_format, report, description))
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
) -> ImageBuildReport:
    """Build `out` (an LMDB folder) from `<item id>.<ext>` files in `images_dir` for the items of `items_tsv`.

    When `out` is `images.lmdb` inside a dataset folder (one with dataset.json), the dataset's dataset.json is
    updated to record the images as real, with their hash and the items left without an image: the LMDB and
    dataset.json are one replacement of the dataset folder, so a crash never leaves one without the other.
    """
    from pmmrec.data.dataset import INFO_FILE, attach_images, read_items_tsv

    out = Path(out)
    recover(out.parent)  # a dataset folder whose replacement was interrupted is whole again before we look
    item_ids, _texts = read_items_tsv(items_tsv)
    files = index_image_folder(images_dir)

    def fetch(item_id: str) -> np.ndarray | None:
        source = files.get(item_id)
        return None if source is None else load_image_file(source, size)

    if out.name == "images.lmdb" and (out.parent / INFO_FILE).is_file():

        def build(path: Path) -> ImageBuildReport:
            return build_image_lmdb_into(path, item_ids, fetch, payload_format, allow_missing, "build-lmdb")

        return attach_images(out.parent, build, kind="real", image_size=size, overwrite=overwrite)
    try:
        with atomic_directory(out, overwrite=overwrite) as staging:
            report = build_image_lmdb_into(staging, item_ids, fetch, payload_format, allow_missing, "build-lmdb")
    except DatasetError:
        raise
    except PmmrecError as exc:  # atomic_directory refusing an existing folder
        raise DatasetError(str(exc)) from exc
    return report


_OPEN_ENVIRONMENTS: dict[tuple[int, int, int], tuple[str, lmdb.Environment]] = {}
_OPEN_LOCK = threading.Lock()


def _file_identity(path: Path) -> tuple[int, int]:
    try:
        status = (path / LMDB_DATA_FILE).stat()
    except OSError as exc:
        raise DatasetError(f"{path}: not an image LMDB folder ({exc.strerror or exc})") from exc
    return status.st_dev, status.st_ino


def shared_environment(path: Path) -> lmdb.Environment:
    """One read-only environment per LMDB file and process, shared by every ImageStore on it.

    LMDB forbids opening the same files twice in one process, so stores share handles. Handles inherited
    through fork() are closed in the child (closing them there does not affect the parent) and reopened; a
    rebuilt LMDB (new file) gets a new handle and the stale one is closed.
    """
    pid = os.getpid()
    device, inode = _file_identity(path)
    resolved = str(path.resolve())
    with _OPEN_LOCK:
        cached = _OPEN_ENVIRONMENTS.get((pid, device, inode))
        if cached is not None:
            return cached[1]
        for key, (cached_path, environment) in list(_OPEN_ENVIRONMENTS.items()):
            if key[0] != pid or cached_path == resolved:
                environment.close()
                del _OPEN_ENVIRONMENTS[key]
        try:
            environment = lmdb.open(resolved, readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
        except lmdb.Error as exc:
            raise DatasetError(f"{path}: cannot open image LMDB ({exc})") from exc
        _OPEN_ENVIRONMENTS[(pid, device, inode)] = (resolved, environment)
        return environment


def close_environment(path: Path) -> None:
    """Close this process's handle on the LMDB at `path`, if any (stores reopen it on next use)."""
    pid = os.getpid()
    try:
        identity: tuple[int, int] | None = _file_identity(path)
    except DatasetError:
        identity = None
    resolved = str(path.resolve())
    with _OPEN_LOCK:
        for key, (cached_path, environment) in list(_OPEN_ENVIRONMENTS.items()):
            if key[0] == pid and (key[1:] == identity or cached_path == resolved):
                environment.close()
                del _OPEN_ENVIRONMENTS[key]


class ImageStore:
    """Read-only view of an image LMDB, opened lazily once per process and reopened after a fork.

    The store itself holds only its path, so it pickles into DataLoader workers and DistributedSampler setups;
    the LMDB handle lives in a per-process table (see shared_environment).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / LMDB_DATA_FILE).is_file():
            raise DatasetError(f"{self.path}: not an image LMDB folder (no {LMDB_DATA_FILE})")

    def get_value(self, item_id: str) -> bytes | None:
        """The stored bytes for `item_id`, or None."""
        with shared_environment(self.path).begin(buffers=False) as txn:
            value = txn.get(item_id.encode("utf-8"))
        return None if value is None else bytes(value)

    def get(self, item_id: str) -> np.ndarray | None:
        """The item's image as an HxWx3 uint8 array, or None when it has none."""
        value = self.get_value(item_id)
        if value is None:
            return None
        return decode_image_value(value, where=f"{self.path.name}: item {item_id!r}")

    def keys(self) -> list[str]:
        """All item ids with an image, in LMDB key order."""
        keys: list[str] = []
        with shared_environment(self.path).begin() as txn:
            for raw in txn.cursor().iternext(keys=True, values=False):
                try:
                    keys.append(bytes(raw).decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{self.path.name}: key {bytes(raw)!r} is not UTF-8") from exc
        return keys

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get_value(item_id) is not None

    def __len__(self) -> int:
        return int(shared_environment(self.path).stat()["entries"])

    def close(self) -> None:
        """Close this process's handle on the LMDB (it reopens on next use)."""
        close_environment(self.path)
