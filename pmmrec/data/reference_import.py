"""Import the reference family's files (`*_users.tsv`, `*_items_texts.tsv`, an image LMDB) as a dataset folder.

The reference code stores each image as a pickled Python object (`LMDB_Image`: raw pixel bytes, size, channels).
Unpickling runs whatever code the file's author put in it, so such values are read only after the user passes
`trust_pickle=True` (CLI: `--trust-pickle`), and even then through a restricted unpickler that rebuilds numpy
arrays, bytes and an inert stand-in for `LMDB_Image`, and refuses every other global (os.system, eval, ...).
Values that are already plain encoded images (PNG, JPEG, WebP, GIF, BMP) or this project's own format are read
without any of that. Images are resized once, like `build-lmdb`, and stored in this project's format.
"""

from __future__ import annotations

import codecs
import io
import pickle
import warnings
from pathlib import Path
from typing import Any, ClassVar

import lmdb
import numpy as np
from PIL import Image

from pmmrec.data.builders import ImageSource, write_dataset
from pmmrec.data.dataset import read_items_tsv, read_users_tsv
from pmmrec.data.image_store import (
    DEFAULT_IMAGE_SIZE,
    FatalImageError,
    decode_image_bytes,
    decode_image_value,
    is_image_value,
    lmdb_errors,
    open_checked_lmdb,
    resize_and_center_crop,
)
from pmmrec.errors import DatasetError, PmmrecWarning
from pmmrec.fileio import sha256_file

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

PICKLE_RISK = (
    "unpickling runs arbitrary code chosen by whoever wrote the file, so a pickled LMDB from an untrusted source "
    "can take over your account"
)
_ENCODED_IMAGE_MAGICS: tuple[bytes, ...] = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_MODULE_ALIASES = {
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}


class UntrustedPickleError(FatalImageError):
    """A pickled LMDB value was met without the user's explicit trust."""


class ForbiddenPickleError(FatalImageError):
    """A pickled value asked for a global outside the allow-list (possibly malicious)."""


class ReferenceImageRecord:
    """Inert stand-in for the reference code's `LMDB_Image`: holds its attributes, runs nothing."""

    image: Any
    size: Any
    channels: Any


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor, limited to building the inert image record (protocol 0/1 pickles)."""
    if cls is not ReferenceImageRecord or base is not object or state is not None:
        raise ForbiddenPickleError("pickle asked copyreg._reconstructor for something other than an image record")
    return object.__new__(ReferenceImageRecord)


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes: only str -> latin-1."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise ForbiddenPickleError("pickle used _codecs.encode other than str -> latin-1 bytes")
    return text.encode("latin-1")


def _copy_of(kind: type) -> Any:
    """builtins.bytes / bytearray limited to copying bytes: no size argument (`bytearray(3_400_000_000)` from a
    33-byte pickle), no iterable of ints."""

    def copy(*args: Any) -> Any:
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], bytes | bytearray):
            return kind(args[0])
        raise ForbiddenPickleError(f"pickle called {kind.__name__}() with arguments other than a bytes object")

    return copy


class _ArrayClass:
    """What the pickle's `numpy.ndarray` global becomes: a marker for `_reconstruct`, not a callable class."""


_ARRAY_CLASS = _ArrayClass()


def _reconstruct_empty(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's _reconstruct as pickled arrays use it: an empty array whose __setstate__ then fills it from bytes in the
    stream (any other shape would allocate memory the stream never paid for)."""
    if subtype is not _ARRAY_CLASS or tuple(shape) != (0,) or not isinstance(dtype, bytes | str):
        raise ForbiddenPickleError("pickle called numpy's _reconstruct for something other than an empty array")
    return _np_multiarray._reconstruct(np.ndarray, (0,), dtype)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_empty,
    ("numpy._core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): np.dtype,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("builtins", "bytes"): _copy_of(bytes),
    ("builtins", "bytearray"): _copy_of(bytearray),
    ("_codecs", "encode"): _latin1_encode,
}
# Caps on what one pickled value may build: its size, and its opcodes (each builds at most one object or container
# entry, so memory stays within a small multiple of the value's own bytes).
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPCODES = 1_000_000


def _counted(handler: Any) -> Any:
    def run(self: RestrictedUnpickler) -> None:
        self.opcodes += 1
        if self.opcodes > MAX_PICKLE_OPCODES:
            raise ForbiddenPickleError(f"pickle builds more than {MAX_PICKLE_OPCODES:,} objects (an image record needs a few)")
        handler(self)

    return run


_PurePythonUnpickler: Any = vars(pickle)["_Unpickler"]  # the unpickler whose opcodes can be counted one by one


class RestrictedUnpickler(_PurePythonUnpickler):
    """An Unpickler that resolves only allow-listed globals; any class named LMDB_Image becomes an inert record.

    It is the pure-Python unpickler with every opcode counted, so no container can grow past the caps.
    """

    dispatch: ClassVar[dict[int, Any]] = {code: _counted(h) for code, h in _PurePythonUnpickler.dispatch.items()}

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.opcodes = 0

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if name == "LMDB_Image":
            return ReferenceImageRecord
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise ForbiddenPickleError(f"refused to unpickle global '{module}.{name}' (not on the allow-list)")


def restricted_unpickle(value: bytes, where: str) -> Any:
    """Unpickle `value` with RestrictedUnpickler; every failure becomes a DatasetError naming `where`."""
    if len(value) > MAX_PICKLE_BYTES:
        raise ForbiddenPickleError(f"{where}: pickled value of {len(value):,} bytes is over the {MAX_PICKLE_BYTES:,}-byte cap")
    try:
        return RestrictedUnpickler(io.BytesIO(value)).load()
    except ForbiddenPickleError as exc:
        raise ForbiddenPickleError(f"{where}: {exc}") from None
    except Exception as exc:  # corrupt pickles raise many types; all mean "unreadable value"
        raise DatasetError(f"{where}: unreadable pickled value ({type(exc).__name__}: {exc})") from exc


def _pixels_from_object(obj: Any, where: str) -> np.ndarray:
    """An HxWx3 (or HxW, HxWx1, HxWx4) uint8 array from what the reference family pickles."""
    if isinstance(obj, ReferenceImageRecord):
        raw, size, channels = getattr(obj, "image", None), getattr(obj, "size", None), getattr(obj, "channels", None)
        if isinstance(raw, np.ndarray):
            return _pixels_from_object(raw, where)
        if not isinstance(raw, bytes | bytearray):
            raise DatasetError(f"{where}: LMDB_Image record has no image bytes")
        if not (isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(side, int) for side in size)):
            raise DatasetError(f"{where}: LMDB_Image record has an invalid size {size!r}")
        if not isinstance(channels, int) or channels not in (1, 3, 4):
            raise DatasetError(f"{where}: LMDB_Image record has an invalid channel count {channels!r}")
        height, width = size
        if height < 1 or width < 1 or len(raw) != height * width * channels:
            raise DatasetError(f"{where}: LMDB_Image holds {len(raw)} bytes, size says {height}x{width}x{channels}")
        return np.frombuffer(bytes(raw), dtype=np.uint8).reshape(height, width, channels)
    if isinstance(obj, dict) and "image" in obj:
        return _pixels_from_object(obj["image"], where)
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.uint8 or obj.ndim not in (2, 3) or (obj.ndim == 3 and obj.shape[2] not in (1, 3, 4)):
            raise DatasetError(f"{where}: pickled array of shape {obj.shape} dtype {obj.dtype} is not an image")
        if obj.size == 0:
            raise DatasetError(f"{where}: pickled array is empty")
        return obj
    raise DatasetError(f"{where}: pickled {type(obj).__name__} is not an image record")


def _to_rgb_resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    picture = Image.fromarray(np.ascontiguousarray(pixels), mode=mode)
    return np.array(resize_and_center_crop(picture, size), dtype=np.uint8)


def looks_like_encoded_image(value: bytes) -> bool:
    """True for PNG, JPEG, GIF, BMP or WebP bytes."""
    return value.startswith(_ENCODED_IMAGE_MAGICS) or (value[:4] == b"RIFF" and value[8:12] == b"WEBP")


def decode_reference_value(value: bytes, *, trust_pickle: bool, size: int, where: str) -> np.ndarray:
    """Pixels (size x size x 3) from a reference-family LMDB value: own format, encoded image, or (trusted) pickle."""
    if is_image_value(value):
        return _to_rgb_resized(decode_image_value(value, where), size)
    if looks_like_encoded_image(value):
        return decode_image_bytes(value, size, where)
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{where}: the value is a pickled Python object; {PICKLE_RISK}. pmmrec refuses it. If you trust the "
            "file's author, pass --trust-pickle (even then only numpy arrays, bytes and LMDB_Image records are rebuilt)"
        )
    return _to_rgb_resized(_pixels_from_object(restricted_unpickle(value, where), where), size)


def reference_keys(item_id: str) -> list[bytes]:
    """LMDB keys tried for an item: the id itself, then the reference code's rule str(int(id without 'v'))."""
    keys = [item_id.encode("utf-8")]
    stripped = item_id.replace("v", "")
    if stripped.isascii() and stripped.isdigit():
        numeric = str(int(stripped)).encode("ascii")
        if numeric not in keys:
            keys.append(numeric)
    return keys


def _open_reference_lmdb(path: Path) -> lmdb.Environment:
    if not path.exists():
        raise DatasetError(f"{path}: LMDB not found")
    return open_checked_lmdb(path, subdir=path.is_dir())


def _dataset_name(users: Path) -> str:
    stem = users.name
    for suffix in ("_users.tsv", ".tsv"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)] or "imported"
    return stem or "imported"


def import_reference(
    users: Path | str,
    items: Path | str,
    out: Path | str,
    *,
    lmdb_path: Path | str | None = None,
    trust_pickle: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
    payload_format: str = "png",
    allow_missing: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    progress: bool = True,
) -> Path:
    """Convert reference-family files into a dataset folder at `out` (users and items as given, no filtering)."""
    users, items = Path(users), Path(items)
    item_ids, texts = read_items_tsv(items)
    index = {item_id: position + 1 for position, item_id in enumerate(item_ids)}
    user_ids, sequences = read_users_tsv(users, index, items_label=items.name)
    user_items = [[item_ids[position - 1] for position in sequence.tolist()] for sequence in sequences]
    provenance: dict[str, Any] = {
        "source": "reference-family files (PMMRec / NineRec layout)",
        "users_file": {"name": users.name, "sha256": sha256_file(users)},
        "items_file": {"name": items.name, "sha256": sha256_file(items)},
    }
    image_source: ImageSource | None = None
    environment: lmdb.Environment | None = None
    if lmdb_path is not None:
        lmdb_path = Path(lmdb_path)
        environment = _open_reference_lmdb(lmdb_path)
        data_file = lmdb_path / "data.mdb" if lmdb_path.is_dir() else lmdb_path
        provenance["images_file"] = {"name": lmdb_path.name, "sha256": sha256_file(data_file)}
        provenance["trust_pickle"] = trust_pickle
        if trust_pickle:
            warnings.warn(
                f"--trust-pickle: reading pickled values from {lmdb_path.name}; {PICKLE_RISK}. A restricted "
                "unpickler is used, but only trust files from authors you trust.",
                PmmrecWarning,
                stacklevel=2,
            )
        reader = environment

        def fetch(item_id: str) -> np.ndarray | None:
            with lmdb_errors(lmdb_path), reader.begin(buffers=False) as txn:
                for key in reference_keys(item_id):
                    value = txn.get(key)
                    if value is not None:
                        where = f"{lmdb_path.name}: item {item_id!r}"
                        return decode_reference_value(
                            bytes(value), trust_pickle=trust_pickle, size=image_size, where=where
                        )
            return None

        image_source = ImageSource(
            kind="real", fetch=fetch, size=image_size, payload_format=payload_format, allow_missing=allow_missing,
            progress=progress,
        )
    try:
        return write_dataset(
            out,
            name=name or _dataset_name(users),
            item_ids=item_ids,
            item_texts=texts,
            user_ids=user_ids,
            user_items=user_items,
            provenance=provenance,
            preprocessing={
                "note": "imported as given: no filtering; leave_one_out applies min length and max history",
                "image_resize": None if lmdb_path is None else f"shorter side to {image_size} bicubic, centre crop",
            },
            images=image_source,
            overwrite=overwrite,
        )
    finally:
        if environment is not None:
            environment.close()
