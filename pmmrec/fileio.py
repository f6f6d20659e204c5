"""Atomic writes: artefacts, checkpoints and datasets appear complete or not at all."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pmmrec import recovery
from pmmrec.errors import PmmrecError

NEARLY_FULL_BYTES = 1 << 20  # below this much free space, a library's I/O failure is reported as a full disk


class WriteError(PmmrecError, OSError):
    """A write failed (full disk, permissions); the target was left as it was."""

    reason: str = "write failed"


def _write_error(target: Path, reason: str, tail: str) -> WriteError:
    error = WriteError(f"could not write {target}: {reason}; {tail}")
    error.reason = reason
    return error


def open_regular_file(path: str | os.PathLike[str], error: type[PmmrecError] = PmmrecError) -> BinaryIO:
    """Open a file for reading, refusing FIFOs, devices and folders without blocking on them (one-line error)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise error(f"{path}: is {kind}; expected a regular file")
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give a file the mode a plain `open` would (0o666 less the umask): some writers (safetensors) create 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a regular file, read in chunks (a FIFO is refused instead of read forever)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _free_bytes(path: Path) -> int | None:
    """Free bytes for unprivileged writers on the filesystem holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        info = os.statvfs(probe)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def write_failure_reason(exc: BaseException, where: Path) -> str | None:
    """Why a write failed, in a few words, or None when `exc` is not a write failure.

    Libraries report a full disk in their own ways (safetensors: SafetensorError "... (os error 28)", torch.save:
    RuntimeError "unexpected pos", LMDB: "mdb_txn_commit: Input/output error"); a failure of theirs while the
    filesystem is (nearly) full is reported as the full disk it is.
    """
    if isinstance(exc, WriteError):
        return exc.reason  # a nested write (a component inside a model folder): name the outer target
    if isinstance(exc, OSError) and not isinstance(exc, PmmrecError):
        return exc.strerror or str(exc)
    if isinstance(exc, PmmrecError) or not isinstance(exc, Exception):
        return None
    text = str(exc)
    if "os error 28" in text or "No space left on device" in text or "StorageFull" in text:
        return os.strerror(errno.ENOSPC)
    library = type(exc).__module__.split(".")[0] in {"safetensors", "lmdb"} or type(exc) is RuntimeError
    if not library:
        return None
    free = _free_bytes(where)
    if free is not None and free < NEARLY_FULL_BYTES:
        return os.strerror(errno.ENOSPC)
    io_markers = ("Input/output error", "I/O error", "unexpected pos", "file write failed", "PytorchStreamWriter")
    if any(marker in text for marker in io_markers):
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'I/O error'}"
    return None


def _fsync_dir(path: Path) -> None:
    recovery.fsync_dir(path)


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new hidden sibling file opened for writing; created with mode 0o666 so the user's umask applies."""
    while True:
        name = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        recovery.lock_temporary_file(fd)
        return fd, name


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing and rename it into place on success."""
    target = Path(path)
    tmp_name: Path | None = None
    guard: int | None = None  # a duplicate descriptor keeps the temporary file's lock until it is renamed
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recovery.remove_abandoned_files(target)
        fd, tmp_name = _create_temporary(target)
        guard = os.dup(fd)
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding}
        with open(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        reason = write_failure_reason(exc, target.parent)  # before the cleanup frees space again
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        if reason is not None:
            raise _write_error(target, reason, "the previous file is unchanged") from exc
        raise
    finally:
        if guard is not None:
            os.close(guard)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically, pretty-printed and newline-terminated."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside `path`; on success it replaces `path` (see pmmrec.recovery for the journal).

    An existing `path` is refused unless `overwrite` is set, so a user's artefact is never replaced silently.
    A crash at any instant leaves the previous or the new version, which `recovery.recover` (called by every
    reader and at the start of every write) puts back under the name. Concurrent writers: the rename of the
    second one fails instead of mixing.
    """
    target = Path(path)
    recovery.recover(target)
    if target.exists() and not overwrite:
        raise PmmrecError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if target.exists() and not target.is_dir():
        raise PmmrecError(f"{target} exists and is not a folder")
    staging: recovery.Staging | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = recovery.Staging.create(target)
        yield staging.path
        _fsync_tree(staging.path)
        try:
            staging.commit(overwrite=overwrite)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) and (overwrite or not target.exists()):
                raise
            raise PmmrecError(f"{target} was created by another writer while this one ran; nothing was mixed in") from exc
        _fsync_dir(target.parent)
    except BaseException as exc:
        reason = write_failure_reason(exc, target.parent)  # before the cleanup frees space again
        if staging is not None:
            staging.discard()
        if reason is not None:
            raise _write_error(target, reason, "nothing was changed there") from exc
        raise
    finally:
        if staging is not None:
            staging.release()


def link_or_copy(source: str, destination: str) -> str:
    """Hard-link a file that is never modified in place (dataset files), or copy it where links are impossible."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination
