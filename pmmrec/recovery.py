"""Crash-proof folder replacement: the journal of hidden siblings, and the one recovery every reader calls.

A folder `NAME` is written as a hidden sibling `.NAME.pmmrec-T.tmp` (T: a random token), locked with `flock`
by its writer for as long as it lives. Replacing an existing `NAME` takes two renames:

1. `NAME` -> `.NAME.pmmrec-T.old`   (only once `.tmp` is complete and on disk)
2. `.NAME.pmmrec-T.tmp` -> `NAME`

then `.old` is deleted. A process killed between the two renames leaves `NAME` missing, and the pair (`.old`,
`.tmp`) with the same T says what happened: the `.tmp` is complete, because step 1 only happens after it is. So
`recover(NAME)` finishes the replacement (renames `.tmp` into place: the new state); a `.old` without its `.tmp`
goes back into place (the previous state). Leftovers are removed only when they are certainly dead: a `.old`
whose `.tmp` is gone (the replacement finished), a `.tmp` whose writer's lock is free (its process died).
Readers and writers call `recover` before they look at `NAME`, so no kill at any instant loses a folder.

Folders left by the previous pmmrec (before this journal: `.NAME.XXXXXXXX.old/old` moved aside and never restored) are put back too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no locks, so leftovers are never judged dead)
    fcntl = None  # type: ignore[assignment]

MARK = ".pmmrec-"
_JOURNAL = re.compile(r"^\.(?P<name>.+)\.pmmrec-(?P<token>[0-9a-f]{12})\.(?P<kind>tmp|old)$")
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.old$")  # the previous pmmrec: mkdtemp(...)/old


def sibling(target: Path, token: str, kind: str) -> Path:
    """The hidden journal name of `target` for one write (`kind` is 'tmp' or 'old')."""
    return target.parent / f".{target.name}{MARK}{token}.{kind}"


@dataclass
class Staging:
    """A locked staging folder beside `target`; `commit` swaps it into place."""

    target: Path
    token: str
    path: Path
    lock_fd: int | None

    @classmethod
    def create(cls, target: Path) -> Staging:
        """mkdir `.NAME.pmmrec-T.tmp` (the user's umask applies) and hold its lock while this process lives."""
        while True:
            token = secrets.token_hex(6)
            path = sibling(target, token, "tmp")
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                continue
        return cls(target=target, token=token, path=path, lock_fd=_lock(path, wait=True))

    def commit(self, overwrite: bool) -> None:
        """Rename the staging folder to `target`; an existing target is first moved to `.old`, then deleted."""
        target = self.target
        if overwrite and os.path.lexists(target):
            old = sibling(target, self.token, "old")
            os.rename(target, old)
            try:
                os.rename(self.path, target)
            except OSError:
                if not self._finished_by_someone_else():
                    with contextlib.suppress(OSError):
                        os.rename(old, target)  # put the previous version back
                    raise
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
            return
        os.rename(self.path, target)

    def _finished_by_someone_else(self) -> bool:
        # A reader's `recover` may have renamed our complete .tmp into place between our two renames.
        return not os.path.lexists(self.path) and os.path.lexists(self.target)

    def discard(self) -> None:
        """Delete the staging folder (after a failure); the target is untouched."""
        if os.path.lexists(self.path):
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        """Drop the writer's lock."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _lock(path: Path, *, wait: bool) -> int | None:
    """An open descriptor of `path` holding an exclusive flock, or None (lock taken, path gone, no flock)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _if_abandoned(path: Path) -> Iterator[bool]:
    """True (while holding its lock) when the process that wrote `path` is gone."""
    fd = _lock(path, wait=False)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (ignored where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _journal(parent: Path) -> dict[str, dict[str, dict[str, Path]]]:
    """name -> token -> kind -> path for every journal entry in `parent` (legacy `.old` folders as kind 'legacy')."""
    found: dict[str, dict[str, dict[str, Path]]] = {}
    try:
        entries = os.listdir(parent)
    except OSError:
        return found
    for entry in entries:
        match = _JOURNAL.match(entry)
        if match:
            found.setdefault(match["name"], {}).setdefault(match["token"], {})[match["kind"]] = parent / entry
            continue
        legacy = _LEGACY_OLD.match(entry)
        if legacy and MARK not in entry and os.path.isdir(parent / entry / "old"):
            found.setdefault(legacy["name"], {}).setdefault(entry, {})["legacy"] = parent / entry
    return found


def _rename_into_place(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
            return False  # another process recovered it first
        raise
    fsync_dir(target.parent)
    return True


def _recover_name(target: Path, pending: dict[str, dict[str, Path]]) -> None:
    """Finish or roll back an interrupted replacement of `target`, then delete dead leftovers."""
    if not os.path.lexists(target):
        for token in sorted(pending):
            kinds = pending[token]
            if "old" in kinds and "tmp" in kinds and _rename_into_place(kinds["tmp"], target):
                break  # the new version was complete: finish the replacement
        else:
            for token in sorted(pending):
                kinds = pending[token]
                if "old" in kinds and _rename_into_place(kinds["old"], target):
                    break  # no complete new version: the previous one goes back
                if "legacy" in kinds and _rename_into_place(kinds["legacy"] / "old", target):
                    break
    for kinds in pending.values():
        tmp, old, legacy = kinds.get("tmp"), kinds.get("old"), kinds.get("legacy")
        if old is not None and os.path.lexists(old) and os.path.lexists(target):
            if tmp is None or not os.path.lexists(tmp):
                shutil.rmtree(old, ignore_errors=True)  # the replacement finished; its old copy is garbage
                continue
            with _if_abandoned(tmp) as dead:
                if dead:  # another writer took the name meanwhile and this one died: neither is needed
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.rmtree(old, ignore_errors=True)
        elif tmp is not None and old is None and os.path.lexists(tmp):
            with _if_abandoned(tmp) as dead:
                if dead:  # a writer killed while staging: never complete, never renamed
                    shutil.rmtree(tmp, ignore_errors=True)
        if legacy is not None and os.path.lexists(target):
            shutil.rmtree(legacy, ignore_errors=True)


def recover(path: str | os.PathLike[str]) -> None:
    """Bring `path` (and any missing parent) back to a complete version after a crash; call before reading.

    Safe to call from any number of processes at once, and while a writer is working: it never deletes what a
    living writer still needs, and never leaves the name empty when a complete version exists beside it.
    """
    target = Path(path)
    missing = []
    probe = target
    while not os.path.lexists(probe) and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for folder in [*reversed(missing), *([] if missing else [target])]:
        pending = _journal(folder.parent).get(folder.name)
        if pending:
            _recover_name(folder, pending)
        elif not os.path.lexists(folder):
            return  # nothing to recover from: deeper names cannot exist either


_TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


def lock_temporary_file(fd: int) -> None:
    """Mark a temporary file as in use by this process (atomic_file holds it until the rename)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def remove_abandoned_files(target: Path) -> None:
    """Delete temporary siblings `.NAME.XXXXXXXX.tmp` of a file whose writers died (their lock is free)."""
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY_FILE.match(entry)
        if match and match["name"] == target.name and MARK not in entry:
            path = target.parent / entry
            if os.path.isfile(path):
                with _if_abandoned(path) as dead:
                    if dead:
                        with contextlib.suppress(OSError):
                            os.unlink(path)


def recover_children(folder: str | os.PathLike[str]) -> None:
    """`recover` every name inside `folder` that has journal entries (a run folder, a checkpoints folder)."""
    folder = Path(folder)
    for name, pending in _journal(folder).items():
        _recover_name(folder / name, pending)
