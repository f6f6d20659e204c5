"""Atomic writes: artefacts, checkpoints and datasets appear complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pmmrec.errors import PmmrecError


class WriteError(PmmrecError, OSError):
    """A write failed (full disk, permissions); the target was left as it was."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing and rename it into place on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding}
        with open(tmp_name, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {target}: {exc.strerror or exc}; the previous file is unchanged") from exc
        raise


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically, pretty-printed and newline-terminated."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`.

    An existing `path` is refused unless `overwrite` is set, so a user's artefact is never
    replaced silently. Concurrent writers: the rename of the second one fails instead of mixing.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise PmmrecError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if target.exists() and not target.is_dir():
        raise PmmrecError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        for root, _dirs, files in os.walk(staging):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
        if overwrite and target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, trash / "old")
            try:
                os.replace(staging, target)
            except OSError:
                os.replace(trash / "old", target)  # put the previous version back
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) and not target.exists():
                    raise
                raise PmmrecError(
                    f"{target} was created by another writer while this one ran; nothing was mixed in"
                ) from exc
        _fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise WriteError(f"could not write {target}: {exc.strerror or exc}; nothing was changed there") from exc
        raise
