"""Image LMDB: a fixed binary value format (never pickle), its reader and its writer (builders: `builders`).

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
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image, ImageOps

from pmmrec.data.lmdb_check import check_lmdb_file
from pmmrec.errors import DatasetError
from pmmrec.imaging import check_image_shape, resize_and_center_crop

__all__ = ["ImageStore", "decode_image_value", "encode_image_value", "resize_and_center_crop", "write_image_lmdb"]

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
    check_image_shape(width, height, where=where)
    payload = memoryview(value)[HEADER.size :]
    if PAYLOAD_NAMES[payload_code] == "raw":
        expected = height * width * channels
        if len(payload) != expected:
            raise DatasetError(f"{where}: raw payload has {len(payload)} bytes, header implies {expected}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width, channels).copy()
    try:  # the header names the format: no probing of every PIL plugin, no copy when already RGB
        with Image.open(io.BytesIO(payload), formats=[PAYLOAD_NAMES[payload_code].upper()]) as picture:
            if picture.size != (width, height):  # checked before decoding: the header's shape is the budgeted one
                raise DatasetError(f"{where}: payload is {picture.size[0]}x{picture.size[1]}, header says {width}x{height}")
            picture.load()
            pixels = np.array(picture if picture.mode == "RGB" else picture.convert("RGB"), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data; all mean "undecodable"
        raise DatasetError(f"{where}: undecodable {PAYLOAD_NAMES[payload_code]} payload ({exc})") from exc
    if pixels.shape != (height, width, channels):
        raise DatasetError(f"{where}: decoded image is {pixels.shape}, header says {(height, width, channels)}")
    return pixels


def load_image_file(path: Path, size: int) -> np.ndarray:
    """Decode an image file, apply its EXIF orientation and resize/crop it to size x size RGB."""
    try:
        with Image.open(path) as picture:
            check_image_shape(*picture.size, (size,), where=str(path))  # before a pixel is decoded
            picture.load()
            oriented = ImageOps.exif_transpose(picture)
            return np.array(resize_and_center_crop(oriented, size, where=str(path)), dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as exc:  # any decoder failure means the file is unusable
        raise DatasetError(f"{path}: undecodable image ({exc})") from exc


def decode_image_bytes(data: bytes, size: int, where: str) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, WebP, ...) held in memory and resize/crop it to size x size."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            check_image_shape(*picture.size, (size,), where=where)  # before a pixel is decoded
            picture.load()
            return np.array(resize_and_center_crop(ImageOps.exif_transpose(picture), size, where=where), dtype=np.uint8)
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
        environment = open_checked_lmdb(Path(resolved), subdir=True)
        _OPEN_ENVIRONMENTS[(pid, device, inode)] = (resolved, environment)
        return environment


def open_checked_lmdb(path: Path, *, subdir: bool) -> lmdb.Environment:
    """A read-only environment on an LMDB that `check_lmdb_file` has checked first (so no read can end the process)."""
    check_lmdb_file(path / LMDB_DATA_FILE if subdir else path)
    with lmdb_errors(path):
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=subdir)


@contextlib.contextmanager
def lmdb_errors(path: Path) -> Iterator[None]:
    """Any error of the lmdb library (a corrupted page, a bad open) as one DatasetError naming the file."""
    try:
        yield
    except lmdb.Error as exc:
        detail = " ".join(str(exc).split())
        raise DatasetError(f"{path}: unreadable LMDB ({type(exc).__name__}: {detail})") from None


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
        with lmdb_errors(self.path), shared_environment(self.path).begin(buffers=False) as txn:
            value = txn.get(item_id.encode("utf-8"))
        return None if value is None else bytes(value)

    def get(self, item_id: str) -> np.ndarray | None:
        """The item's image as an HxWx3 uint8 array, or None when it has none."""
        value = self.get_value(item_id)
        if value is None:
            return None
        return decode_image_value(value, where=f"{self.path.name}: item {item_id!r}")

    def get_many(self, item_ids: list[str]) -> list[np.ndarray | None]:
        """Images of many items read in one transaction (a batch of the collator), None where an item has none."""
        with lmdb_errors(self.path), shared_environment(self.path).begin(buffers=False) as txn:
            values = [txn.get(item_id.encode("utf-8")) for item_id in item_ids]
        return [
            None if value is None else decode_image_value(value, where=f"{self.path.name}: item {item_id!r}")
            for item_id, value in zip(item_ids, values, strict=True)
        ]

    def keys(self) -> list[str]:
        """All item ids with an image, in LMDB key order."""
        keys: list[str] = []
        with lmdb_errors(self.path), shared_environment(self.path).begin() as txn:
            for raw in txn.cursor().iternext(keys=True, values=False):
                try:
                    keys.append(bytes(raw).decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{self.path.name}: key {bytes(raw)!r} is not UTF-8") from exc
        return keys

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get_value(item_id) is not None

    def __len__(self) -> int:
        with lmdb_errors(self.path):
            return int(shared_environment(self.path).stat()["entries"])

    def close(self) -> None:
        """Close this process's handle on the LMDB (it reopens on next use)."""
        close_environment(self.path)
