"""Crash-proof replacement of folders (pmmrec.recovery): every state a kill can leave is recovered by the next reader.

The crash-point harness (test_crashpoints.py) kills real commands at every operation; these tests pin the rules
one by one, each on the state a kill at one instant leaves, and a few fast end-to-end kills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pmmrec.fileio import atomic_directory, atomic_file
from pmmrec.recovery import Staging, recover, recover_children, sibling

pytestmark = pytest.mark.robustness

# Writes v2 over TARGET (holding v1), calling os._exit (as a SIGKILL would: no cleanup runs) right before the
# first rename whose destination is DEST.
KILL_BEFORE_RENAME_TO = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pmmrec.fileio import atomic_directory

    target, dest = Path(sys.argv[1]), os.path.abspath(sys.argv[2])
    real_rename, real_replace = os.rename, os.replace

    def rename(src, dst, *args, **kwargs):
        if os.path.abspath(dst) == dest:
            os._exit(9)
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if os.path.abspath(dst) == dest:
            os._exit(9)
        return real_replace(src, dst, *args, **kwargs)

    os.rename, os.replace = rename, replace
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "version.txt").write_text("v2")
        (staging / "user").mkdir()
        (staging / "user" / "version.txt").write_text("v2")
    """
)


def _versions(folder: Path) -> str:
    return (folder / "version.txt").read_text()


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _write(target: Path, version: str, overwrite: bool = False) -> None:
    with atomic_directory(target, overwrite=overwrite) as staging:
        (staging / "version.txt").write_text(version)


def _kill_before_rename_to(target: Path, dest: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME_TO, str(target), str(dest)], timeout=60)
    assert done.returncode == 9, "the write was not killed at the expected rename"


def test_a_kill_between_the_two_renames_of_a_replacement_loses_nothing(tmp_path: Path) -> None:
    # Bug: the old folder was moved aside, then the kill came before the new one was renamed in: the name was
    # empty for good and the moved-aside copy never restored.
    target = tmp_path / "artefact"
    _write(target, "v1")
    _kill_before_rename_to(target, target)
    assert not target.exists()  # the instant of the kill: both versions exist only beside the name
    recover(target)
    assert _versions(target) == "v2"  # the new version was complete: the replacement is finished
    assert _hidden(tmp_path) == []


def test_the_next_writer_recovers_first(tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    _write(target, "v1")
    _kill_before_rename_to(target, target)
    with pytest.raises(Exception, match="already exists"):  # a recovered folder is still never replaced silently
        _write(target, "v3")
    _write(target, "v3", overwrite=True)
    assert _versions(target) == "v3" and _hidden(tmp_path) == []


def test_a_kill_after_the_swap_leaves_only_garbage_that_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    _write(target, "v1")
    old = sibling(target, "0123456789ab", "old")
    old.mkdir()
    (old / "version.txt").write_text("v0")  # the moved-aside copy of a replacement that finished
    recover(target)
    assert _versions(target) == "v1" and _hidden(tmp_path) == []


def test_a_moved_aside_version_without_its_new_one_goes_back(tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    old = sibling(target, "0123456789ab", "old")
    old.mkdir()
    (old / "version.txt").write_text("v1")
    recover(target)
    assert _versions(target) == "v1" and _hidden(tmp_path) == []


def test_a_folder_moved_aside_by_the_previous_pmmrec_is_restored(tmp_path: Path) -> None:
    # pmmrec before this journal (0.1.0) moved the old version to `.NAME.XXXXXXXX.old/old` and could die before renaming the new one in.
    target = tmp_path / "last"
    (tmp_path / ".last.ab_cd3fg.old" / "old").mkdir(parents=True)
    (tmp_path / ".last.ab_cd3fg.old" / "old" / "version.txt").write_text("v1")
    recover_children(tmp_path)
    assert _versions(target) == "v1" and _hidden(tmp_path) == []


def test_staging_of_a_dead_writer_is_removed_but_a_living_writer_keeps_its_own(tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    _write(target, "v1")
    dead = sibling(target, "dead00000000", "tmp")
    dead.mkdir()
    (dead / "half.bin").write_bytes(b"\0" * 10)
    living = Staging.create(target)  # holds its lock, as a writer in another process would
    try:
        recover(target)
        assert not dead.exists()
        assert living.path.is_dir()
    finally:
        living.discard()
        living.release()


def test_a_reader_of_a_subfolder_recovers_its_parent(tmp_path: Path) -> None:
    # `load_component("model/user")` while `model` itself was being replaced.
    model = tmp_path / "model"
    with atomic_directory(model) as staging:
        (staging / "user").mkdir()
        (staging / "user" / "version.txt").write_text("v1")
    _kill_before_rename_to(model, model)
    recover(model / "user")
    assert _versions(model / "user") == "v2"


def test_a_writer_finished_by_a_reader_is_not_an_error(tmp_path: Path) -> None:
    # A reader's recover() may rename our complete staging into place between our two renames.
    target = tmp_path / "artefact"
    _write(target, "v1")
    real_rename = os.rename
    calls: list[str] = []

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        real_rename(src, dst)
        calls.append(str(dst))
        if len(calls) == 1:  # right after the old version went aside, a reader comes by
            recover(target)

    os.rename = rename  # type: ignore[assignment]
    try:
        _write(target, "v2", overwrite=True)
    finally:
        os.rename = real_rename
    assert _versions(target) == "v2" and _hidden(tmp_path) == []


def test_writes_follow_the_umask(tmp_path: Path) -> None:
    # Bug: staging folders came from mkdtemp (0700) and temporary files from mkstemp (0600), so every artefact,
    # dataset and checkpoint was private to its writer whatever the user's umask.
    previous = os.umask(0o022)
    try:
        _write(tmp_path / "artefact", "v1")
        with atomic_file(tmp_path / "file.json") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "artefact").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o644


def test_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".refs.0123abcd.tmp"
    stale.write_text("half")
    with atomic_file(tmp_path / "refs") as handle:
        handle.write("commit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refs"]
