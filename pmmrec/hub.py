"""Publishing: pushes to the Hugging Face Hub, and a local Hub cache with the same layout as a push + download.

Works on folders only (cards are rendered by `pmmrec.cards` before a folder is published), so it sits below the
components and never imports them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from pmmrec._version import __version__
from pmmrec.errors import ArtefactError, PmmrecError
from pmmrec.fileio import atomic_directory, atomic_file
from pmmrec.references import parse_reference


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    tag: str | None = None,
    token: str | None = None,
    private: bool = False,
    api: Any = None,
    commit_message: str | None = None,
) -> str:
    """Upload an artefact folder to the Hub (create repo, upload, tag); returns the commit id."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_publishable(folder)
    parse_reference(f"hub:{repo_id}" + (f"@{tag}" if tag else ""))
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message or f"pmmrec {__version__}: upload {folder.name}",
        )
        commit = getattr(info, "oid", None) or str(info)
        if tag:
            api.create_tag(repo_id=repo_id, tag=tag, revision=commit)
    except OSError as exc:  # HfHubHTTPError, OfflineModeIsEnabled and network errors are all OSErrors
        raise PmmrecError(f"push of {folder} to {repo_id} failed: {type(exc).__name__}: {exc}") from None
    return commit


def _check_publishable(folder: Path) -> None:
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: not a folder")
    if not ((folder / "config.json").is_file() or (folder / "pmmrec.json").is_file()):
        raise ArtefactError(f"{folder}: neither a component (config.json) nor an assembled model (pmmrec.json)")


def folder_commit_id(folder: Path) -> str:
    """A deterministic 40-hex id of a folder's content (relative paths and bytes), git-style."""
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "little") + rel)
        with open(path, "rb") as handle:
            content = handle.read()
        digest.update(len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


def publish_to_local_cache(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    cache_dir: str | os.PathLike[str],
    tag: str | None = None,
    branch: str = "main",
) -> str:
    """Lay an artefact out in a Hugging Face cache as a push then download would; returns the commit id.

    The layout (`models--ORG--NAME/refs/<branch|tag>` + `snapshots/<commit>/`) is what
    `snapshot_download(..., local_files_only=True)` reads, so `hub:` references resolve offline.
    """
    folder = Path(folder)
    _check_publishable(folder)
    parse_reference(f"hub:{repo_id}" + (f"@{tag}" if tag else ""))
    commit = folder_commit_id(folder)
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.exists():
        with atomic_directory(snapshot) as staging:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
    for ref in filter(None, (branch, tag)):
        ref_path = repo_dir / "refs" / ref
        if tag and ref == tag and ref_path.exists() and ref_path.read_text().strip() != commit:
            raise PmmrecError(
                f"tag {tag!r} of {repo_id} already points to another commit in {cache_dir}; tags never move"
            )
        with atomic_file(ref_path) as handle:
            handle.write(commit)
    return commit
