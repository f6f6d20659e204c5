"""Component references: `hub:ORG/NAME[@REV]`, `hf://ORG/NAME[@REV]` or a local folder.

Each reference carries its own revision; resolution returns the local folder and, for hub
references, the commit the revision resolved to (the snapshot folder's name).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pmmrec.errors import ReferenceResolutionError
from pmmrec.recovery import recover

HUB_PREFIXES = ("hub:", "hf://")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: either a hub repo (with optional revision) or a local path."""

    text: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None


@dataclass(frozen=True)
class ResolvedReference:
    """Where a reference points on disk, and what it resolved to."""

    reference: Reference
    path: Path
    commit: str | None

    @property
    def text(self) -> str:
        return self.reference.text


def is_hub_reference(text: str) -> bool:
    """True for `hub:` and `hf://` references."""
    return text.startswith(HUB_PREFIXES)


def parse_reference(text: str, revision: str | None = None) -> Reference:
    """Parse a reference; `revision` (e.g. from a Python argument) must agree with any `@REV` in it."""
    if not isinstance(text, str) or not text.strip():
        raise ReferenceResolutionError("empty component reference")
    if "\x00" in text:
        raise ReferenceResolutionError(f"reference {text!r}: contains a NUL byte")
    if revision is not None and not _REVISION.match(revision):
        raise ReferenceResolutionError(f"reference {text!r}: invalid revision {revision!r}")
    if not is_hub_reference(text):
        if revision is not None:
            raise ReferenceResolutionError(f"reference {text!r}: a local folder has no revision (got {revision!r})")
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # "~user" for an unknown user
            path = Path(text)
        return Reference(text=text, path=path)
    body = text.split(":", 1)[1].removeprefix("//")
    body = body.removeprefix("models/")
    repo_id, sep, embedded = body.partition("@")
    if sep and not embedded:
        raise ReferenceResolutionError(f"reference {text!r}: empty revision after '@'")
    if repo_id.startswith("models/"):  # "models/" is the Hub's type prefix: an org of that name is ambiguous
        raise ReferenceResolutionError(f"reference {text!r}: {repo_id!r} is ambiguous ('models/' is a type prefix)")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ReferenceResolutionError(
            f"reference {text!r}: {repo_id!r} is not a valid repo id (expected ORG/NAME of letters, digits, '.', '_', '-')"
        )
    if embedded and (not _REVISION.match(embedded) or ".." in embedded):
        raise ReferenceResolutionError(f"reference {text!r}: invalid revision {embedded!r}")
    if embedded and revision is not None and embedded != revision:
        raise ReferenceResolutionError(
            f"reference {text!r}: pins revision {embedded!r} but revision={revision!r} was also given"
        )
    return Reference(text=text, repo_id=repo_id, revision=embedded or revision)


def format_hub_reference(repo_id: str, revision: str | None = None) -> str:
    """The canonical `hub:ORG/NAME[@REV]` text."""
    return f"hub:{repo_id}" + (f"@{revision}" if revision else "")


def hub_is_offline() -> bool:
    """Whether the Hub is off limits: HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.is_offline_mode())


def hub_cache_dir(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The Hub cache to use: an explicit folder, else HF_HUB_CACHE read now, else huggingface_hub's default."""
    if explicit is not None:
        return str(explicit)
    return os.environ.get("HF_HUB_CACHE") or None


def resolve_reference(
    text: str, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> ResolvedReference:
    """Resolve a reference to a local folder, downloading (or reading the HF cache) for hub references."""
    reference = parse_reference(text, revision)
    if reference.path is not None:
        path = reference.path
        recover(path)  # a replacement interrupted by a crash is finished (or rolled back) before reading
        if not path.exists():
            raise ReferenceResolutionError(f"reference {text!r}: no such folder {path}")
        if not path.is_dir():
            raise ReferenceResolutionError(f"reference {text!r}: {path} is a file, not a component folder")
        return ResolvedReference(reference=reference, path=path.resolve(), commit=None)
    return _resolve_hub(reference, cache_dir)


def _resolve_hub(reference: Reference, cache_dir: str | os.PathLike[str] | None) -> ResolvedReference:
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import snapshot_download

    assert reference.repo_id is not None
    offline = hub_is_offline()
    where = f"revision {reference.revision or 'main'!r}, {'offline (HF_HUB_OFFLINE=1)' if offline else 'online'}"
    try:
        folder = snapshot_download(
            reference.repo_id,
            revision=reference.revision,
            cache_dir=hub_cache_dir(cache_dir),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            etag_timeout=5,
            local_files_only=offline,
        )
    except hub_errors.RevisionNotFoundError:
        raise ReferenceResolutionError(f"reference {reference.text!r}: {where}: the revision does not exist") from None
    except hub_errors.RepositoryNotFoundError:
        raise ReferenceResolutionError(
            f"reference {reference.text!r}: {where}: repository {reference.repo_id!r} not found (or no access: check HF_TOKEN)"
        ) from None
    except hub_errors.LocalEntryNotFoundError:
        hint = (
            "it is not in the local Hub cache (HF_HUB_CACHE)"
            if offline
            else "the Hub could not be reached and it is not cached"
        )
        raise ReferenceResolutionError(f"reference {reference.text!r}: {where}: {hint}") from None
    except (hub_errors.HfHubHTTPError, hub_errors.HFValidationError, OSError, ValueError) as exc:
        raise ReferenceResolutionError(f"reference {reference.text!r}: {where}: {type(exc).__name__}: {exc}") from None
    path = Path(folder)
    _confine_to_cache(reference, path, cache_dir)
    commit = path.name if _COMMIT.match(path.name) else None
    return ResolvedReference(reference=reference, path=path, commit=commit)


def _confine_to_cache(reference: Reference, path: Path, cache_dir: str | os.PathLike[str] | None) -> None:
    """A snapshot folder must be `<cache>/models--ORG--NAME/snapshots/<commit>`, and every file in it must resolve
    inside that repo's folder: a local ref such as `../../..` or a symlink to elsewhere never leads outside."""
    from huggingface_hub import constants

    assert reference.repo_id is not None
    cache = Path(hub_cache_dir(cache_dir) or constants.HF_HUB_CACHE).resolve()
    repo = cache / ("models--" + reference.repo_id.replace("/", "--"))
    resolved = path.resolve()
    if resolved.parent != repo / "snapshots" or not _COMMIT.match(resolved.name):
        raise ReferenceResolutionError(
            f"reference {reference.text!r}: resolves to {path}, which is not a snapshot folder of {repo} "
            "(a ref file of the Hub cache points outside it)"
        )
    for root, _dirs, files in os.walk(resolved):
        for name in files:
            target = (Path(root) / name).resolve()
            if not target.is_relative_to(repo):
                raise ReferenceResolutionError(
                    f"reference {reference.text!r}: {Path(root) / name} points outside the Hub cache ({target})"
                )
