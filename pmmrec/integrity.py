"""File checksums of artefacts: written with every component, pinned in every manifest, verified at every load.

A component folder carries `checksums.json`: the sha256 of every file in it except the model card (`README.md`,
documentation that pmmrec never reads and that the Hub lets owners edit) and hidden top-level entries (the
Hub's `.gitattributes`, download metadata). An assembled model's `pmmrec.json` pins the same list per component.
Loading refuses a folder without checksums, a changed, missing or unlisted file, and weights whose header lacks
the tensor checksum, unless the caller explicitly asks for an unverified load (`unverified=True`, or
`PMMREC_ALLOW_UNVERIFIED=1` for the command line), which is reported with a warning.

Checksums detect corruption and edits; they are not signatures. Trust comes from where the folder came from:
a pinned Hub commit, or the manifest of a model you assembled.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pmmrec.errors import ArtefactError
from pmmrec.fileio import sha256_file
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.schemas import ChecksumsFile

CHECKSUMS_FILE = "checksums.json"
CARD_FILE = "README.md"
UNVERIFIED_ENV = "PMMREC_ALLOW_UNVERIFIED"
HEADER_KEYS = ("pmmrec_type", "format_version", "pmmrec_tensors_sha256")


def _report_unverified(folder: Path, explicit: bool) -> None:
    """A Python caller gets a UserWarning; the command line (the environment variable) one `warning:` line."""
    if explicit:
        warnings.warn(f"{folder}: loaded without verifying its files (unverified)", UserWarning, stacklevel=4)
    else:
        sys.stderr.write(f"warning: {folder}: loaded without verifying its files ({UNVERIFIED_ENV}=1)\n")


def allow_unverified(unverified: bool) -> bool:
    """The caller's explicit choice, or PMMREC_ALLOW_UNVERIFIED=1 (how command-line users make it)."""
    return unverified or os.environ.get(UNVERIFIED_ENV) == "1"


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files a checksum list covers: all but README.md and hidden top-level entries."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        relative_root = Path(root).relative_to(folder)
        if relative_root == Path("."):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files = [f for f in files if not f.startswith(".") and f != CARD_FILE]
        for name in files:
            relative = (relative_root / name).as_posix()
            mode = os.stat(Path(root) / name).st_mode  # Hub snapshots hold symlinks to blobs: follow them
            if not stat.S_ISREG(mode):
                raise ArtefactError(f"{folder / relative}: not a regular file")
            found.append(relative)
    return sorted(found)


def file_checksums(folder: Path, *, include_checksums_file: bool = True) -> dict[str, str]:
    """sha256 of every covered file of `folder`."""
    names = [n for n in list_files(folder) if include_checksums_file or n != CHECKSUMS_FILE]
    return {name: sha256_file(folder / name) for name in names}


def write_checksums(folder: Path) -> dict[str, str]:
    """Write `folder/checksums.json` over every other covered file (call after the last file is written)."""
    from pmmrec.fileio import write_json

    files = file_checksums(folder, include_checksums_file=False)
    write_json(folder / CHECKSUMS_FILE, {"format": "pmmrec-checksums", "format_version": 1, "algorithm": "sha256", "files": files})
    return files


def verify_files(folder: Path, expected: Mapping[str, str], source: str, event: str = "it was saved") -> None:
    """Every covered file of `folder` is listed in `expected` with its sha256, and every listed file exists."""
    actual = set(list_files(folder))
    missing = sorted(set(expected) - actual)
    if missing:
        raise ArtefactError(f"{folder / missing[0]}: missing (listed in {source})")
    unlisted = sorted(actual - set(expected))
    if unlisted:
        raise ArtefactError(f"{folder / unlisted[0]}: not listed in {source}; the file was added after {event}")
    verify_files_listed(folder, expected, source, event)


def verify_files_listed(folder: Path, expected: Mapping[str, str], source: str, event: str = "it was saved") -> None:
    """Every file listed in `expected` exists in `folder` as a regular file with that sha256."""
    for name in sorted(expected, key=lambda n: (n == CHECKSUMS_FILE, n)):  # name the edited file, not the list
        if not os.path.lexists(folder / name):
            raise ArtefactError(f"{folder / name}: missing (listed in {source})")
        digest = sha256_file(folder / name)
        if digest != expected[name]:
            raise ArtefactError(
                f"{folder / name}: sha256 {digest[:12]}... does not match {source} ({expected[name][:12]}...); "
                f"the file was changed after {event}"
            )


def read_checksums(folder: Path) -> dict[str, str]:
    """The file list of `folder/checksums.json`, validated strictly."""
    path = folder / CHECKSUMS_FILE
    document = read_json_file(path, error=ArtefactError, max_bytes=16 << 20)
    return dict(validate_strictly(ChecksumsFile, document, str(path), error=ArtefactError).files)


def verify_component_folder(
    folder: Path, *, unverified: bool = False, expected: Mapping[str, str] | None = None, source: str | None = None
) -> None:
    """Check a component folder before any of it is read: against `expected` (a manifest) or its checksums.json."""
    if allow_unverified(unverified):
        _report_unverified(folder, unverified)
        return
    if expected is not None:
        verify_files(folder, expected, source or "the manifest", event="assembly")
        return
    path = folder / CHECKSUMS_FILE
    if not os.path.lexists(path):
        raise ArtefactError(
            f"{path}: missing, so the files of {folder} cannot be verified (written before pmmrec kept checksums, or edited); "
            f"if you trust it, load it with unverified=True (command line: {UNVERIFIED_ENV}=1) and save it again"
        )
    expected_files = read_checksums(folder)
    expected_files[CHECKSUMS_FILE] = sha256_file(path)  # the list covers itself only by being the reference
    verify_files(folder, expected_files, CHECKSUMS_FILE)


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes in name order: detects flipped bits in the data."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(
                tensor.view(torch.uint8).numpy().tobytes()
                if tensor.dim()
                else tensor.reshape(1).view(torch.uint8).numpy().tobytes()
            )
    return digest.hexdigest()


def verify_weights_header(path: Path, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """The header metadata pmmrec writes is mandatory, and its tensor checksum must match the data."""
    missing = [key for key in HEADER_KEYS if key not in metadata]
    if missing:
        raise ArtefactError(
            f"{path}: header metadata lacks {', '.join(missing)}; pmmrec writes them into every weights file, "
            "so this file was not written by pmmrec or was edited"
        )
    if metadata["pmmrec_tensors_sha256"] != tensors_digest(tensors):
        raise ArtefactError(f"{path}: tensor data does not match its checksum (the file is corrupted or was edited)")


def manifest_checksums(entry: Mapping[str, Any], slot: str, manifest: str, unverified: bool) -> dict[str, str] | None:
    """The file list an assembled model pins for one component (None for an unverified load)."""
    if allow_unverified(unverified):
        return None
    files = entry.get("files")
    if files is None:
        raise ArtefactError(
            f"{manifest}: components.{slot} pins only the weights (written before pmmrec kept checksums), so its other files "
            f"cannot be verified; if you trust it, load it with unverified=True (command line: {UNVERIFIED_ENV}=1) "
            "and save it again"
        )
    if files.get("model.safetensors") != entry["sha256"]:
        raise ArtefactError(f"{manifest}: components.{slot}: sha256 and files['model.safetensors'] disagree")
    return dict(files)
