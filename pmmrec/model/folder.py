"""Parts of an assembled model folder read without building the model: one component (a server loads the user
encoder first) and the data split record of a trained model, each verified against the manifest's pins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pmmrec import integrity
from pmmrec.components import Component
from pmmrec.data.split import SPLIT_RECORD, read_split_record
from pmmrec.errors import ArtefactError
from pmmrec.model.manifest import MANIFEST_FILE, check_component_claims, read_manifest, verify_model_files


def load_model_component(folder: Path, manifest: dict[str, Any], slot: str, *, unverified: bool = False) -> Component:
    """One component of an assembled model folder, its files verified against the manifest's pins."""
    entry = manifest["components"][slot]
    checksums = integrity.manifest_checksums(entry, slot, str(folder / MANIFEST_FILE), unverified)
    path = folder / entry["path"]
    component = Component.from_folder(path, unverified=unverified, checksums=checksums, checksums_source=MANIFEST_FILE)
    if component.type_name != entry["type"]:
        raise ArtefactError(f"{path}: is {component.type_name!r} but {MANIFEST_FILE} says {entry['type']!r}")
    check_component_claims(manifest, folder, slot, component.dim)
    return component


def read_model_split_record(folder: str | os.PathLike[str], *, unverified: bool = False) -> dict[str, Any] | None:
    """data_split.json of a trained model folder (None for an assembled, untrained one), verified against the
    sha256 pmmrec.json pins for it before it is read, then validated strictly (types and ranges)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_model_files(folder, manifest, unverified=unverified, reading=(SPLIT_RECORD,))
    return read_split_record(folder)
