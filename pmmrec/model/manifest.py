"""pmmrec.json: the lockfile of an assembled model (each component's type, requested reference, resolved commit,
and the sha256 of its weights), how it is written, read and verified.

Plain data only: this module never builds a model, so the model module and the server can both use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pmmrec import integrity
from pmmrec._version import __version__
from pmmrec.errors import ArtefactError
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover
from pmmrec.schemas import MODEL_FILES, ManifestFile
from pmmrec.slots import SLOTS, modalities_of

MANIFEST_FILE = "pmmrec.json"
MODEL_FORMAT_VERSION = 1


@dataclass
class ComponentSource:
    """Where one component of an assembled model came from."""

    requested: str | None  # the reference as the user gave it; None when created fresh
    resolved_commit: str | None  # the commit a hub revision resolved to
    created: bool  # True when assembly created the component fresh


def manifest_document(
    dim: int,
    modalities: list[str],
    types: dict[str, str],
    sources: dict[str, ComponentSource],
    weight_hashes: dict[str, str],
    file_hashes: dict[str, dict[str, str]],
    model_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The content of pmmrec.json for components given by slot (type, source, weights sha256, every file's sha256)
    and the sha256 of the model folder's own files that pmmrec reads (`model_files`: data_split.json)."""
    entries = {}
    for slot, type_name in types.items():
        source = sources.get(slot, ComponentSource(requested=None, resolved_commit=None, created=True))
        entries[slot] = {
            "type": type_name,
            "path": slot,
            **asdict(source),
            "sha256": weight_hashes[slot],
            "files": file_hashes[slot],
        }
    return {
        "pmmrec_type": "model/pmmrec",
        "format_version": MODEL_FORMAT_VERSION,
        "pmmrec_version": __version__,
        "dim": dim,
        "modalities": modalities,
        "components": entries,
        **({"files": dict(sorted(model_files.items()))} if model_files else {}),
    }


def write_manifest(folder: Path, document: dict[str, Any]) -> None:
    """Write pmmrec.json into a (staging) model folder."""
    (folder / MANIFEST_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def source_of(entry: dict[str, Any]) -> ComponentSource:
    """The provenance recorded for one component."""
    return ComponentSource(
        requested=entry.get("requested"),
        resolved_commit=entry.get("resolved_commit"),
        created=entry.get("created", False),
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse and check pmmrec.json."""
    path = folder / MANIFEST_FILE
    recover(folder)
    if not os.path.lexists(path):
        hint = (
            " (it is a single component: use load_component / Component.from_pretrained)"
            if (folder / "config.json").is_file()
            else ""
        )
        raise ArtefactError(f"{path}: missing; {folder} is not an assembled pmmrec model{hint}")
    manifest = read_json_file(path, error=ArtefactError, max_bytes=16 << 20)
    if not isinstance(manifest, dict) or manifest.get("pmmrec_type") != "model/pmmrec":
        raise ArtefactError(f"{path}: not a pmmrec model manifest (pmmrec_type must be 'model/pmmrec')")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ArtefactError(f"{path}: format_version must be a positive integer")
    if version > MODEL_FORMAT_VERSION:
        raise ArtefactError(f"{path}: format_version {version} is newer than this pmmrec supports; upgrade pmmrec")
    components = manifest.get("components")
    if not isinstance(components, dict) or not components:
        raise ArtefactError(f"{path}: 'components' must be a non-empty object")
    for slot, entry in components.items():
        if slot not in SLOTS:
            raise ArtefactError(f"{path}: unknown component slot {slot!r} (known: {sorted(SLOTS)})")
        if not isinstance(entry, dict) or not {"type", "path", "sha256"} <= entry.keys():
            raise ArtefactError(f"{path}: components.{slot} needs type, path and sha256")
        if entry["path"] != slot:
            raise ArtefactError(f"{path}: components.{slot}.path must be {slot!r}")
    validate_strictly(ManifestFile, manifest, str(path), error=ArtefactError)
    claimed, actual = sorted(manifest["modalities"]), sorted(modalities_of(components))
    if claimed != actual:
        raise ArtefactError(
            f"{path}: modalities says {claimed} but the components ({', '.join(components)}) read {actual}"
        )
    return manifest


def check_component_claims(manifest: dict[str, Any], folder: Path, slot: str, dim: int) -> None:
    """A loaded component has the width pmmrec.json claims for the model (inspect and the server report it)."""
    if dim != manifest["dim"]:
        raise ArtefactError(
            f"{folder / MANIFEST_FILE}: dim says {manifest['dim']} but the {slot} component has d = {dim}"
        )


def verify_model_files(
    folder: Path, manifest: dict[str, Any], *, unverified: bool = False, reading: tuple[str, ...] = ()
) -> None:
    """The model folder's own top level holds only its components, pmmrec.json, the card and the files the manifest
    pins (data_split.json), each matching its sha256; nothing unpinned is ever read.

    A model trained before pmmrec pinned data_split.json has it unpinned: that is tolerated while it is not read, and
    refused (unless the load is unverified) when it is among the files `reading` names.
    """
    if integrity.allow_unverified(unverified):
        return
    pinned: dict[str, str] = manifest.get("files") or {}
    allowed = {MANIFEST_FILE, integrity.CARD_FILE, *SLOTS}  # a slot's folder is read only if the manifest lists it
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry in allowed or entry in pinned:
            continue
        if entry in MODEL_FILES and entry not in reading and "files" not in manifest:
            continue  # a file an older pmmrec wrote without pinning it; not read now
        raise ArtefactError(
            f"{folder / entry}: not pinned by {MANIFEST_FILE} (added after the model was saved, or saved by a pmmrec "
            f"that did not pin it); if you trust it, load it with unverified=True "
            f"(command line: {integrity.UNVERIFIED_ENV}=1)"
        )
    integrity.verify_files_listed(folder, pinned, MANIFEST_FILE, event="the model was saved")
