"""Library functions behind each CLI command (same names); usable directly from Python."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pmmrec.components import Component
from pmmrec.components.base import CONFIG_FILE, WEIGHTS_FILE
from pmmrec.errors import ArtefactError
from pmmrec.factory import ComponentKind, describe_options, init_component
from pmmrec.fileio import sha256_file
from pmmrec.hub import push_folder
from pmmrec.model import MANIFEST_FILE, PMMRec, read_manifest
from pmmrec.references import resolve_reference


def init(kind: ComponentKind, out: str | os.PathLike[str], *, overwrite: bool = False, **options: Any) -> Path:
    """Create a fresh component (pretrained backbone where named) and save it as an artefact."""
    component = init_component(kind, **options)
    return component.save_pretrained(out, overwrite=overwrite)


def assemble(
    out: str | os.PathLike[str],
    *,
    text: str | None = None,
    vision: str | None = None,
    fusion: str | None = None,
    user: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Assemble components given by reference into a model folder; returns it and what was created."""
    if Path(out).exists() and not overwrite:
        raise ArtefactError(f"{out} already exists; pass --overwrite to replace it")
    model = PMMRec.assemble(text=text, vision=vision, fusion=fusion, user=user)
    return model.save_pretrained(out, overwrite=overwrite), model.assembly_notes


def inspect(reference: str, revision: str | None = None) -> dict[str, Any]:
    """Type, key config, parameter counts and provenance of a component or an assembled model."""
    resolved = resolve_reference(reference, revision=revision)
    if (resolved.path / MANIFEST_FILE).is_file():
        manifest = read_manifest(resolved.path)
        model = PMMRec.from_pretrained(resolved.path)
        components = {}
        for slot, component in model.components().items():
            entry = manifest["components"][slot]
            components[slot] = _describe(component) | {
                "requested": entry.get("requested"),
                "resolved_commit": entry.get("resolved_commit"),
                "created": entry.get("created", False),
                "sha256": entry["sha256"],
            }
        return {
            "reference": reference,
            "resolved_commit": resolved.commit,
            "kind": "model",
            "dim": manifest["dim"],
            "modalities": manifest["modalities"],
            "components": components,
        }
    if (resolved.path / CONFIG_FILE).is_file():
        component = Component.from_folder(resolved.path)
        return {
            "reference": reference,
            "resolved_commit": resolved.commit,
            "kind": "component",
            "components": {
                component.kind: _describe(component) | {"sha256": sha256_file(resolved.path / WEIGHTS_FILE)}
            },
        }
    raise ArtefactError(
        f"{resolved.path}: neither a component ({CONFIG_FILE}) nor an assembled model ({MANIFEST_FILE})"
    )


def _describe(component: Component) -> dict[str, Any]:
    trainable, frozen = component.parameter_counts()
    return {
        "type": component.type_name,
        "config": describe_options(component),
        "trainable": trainable,
        "frozen": frozen,
    }


def format_inspection(report: dict[str, Any]) -> str:
    """A readable rendering of `inspect`'s report."""
    lines = [
        f"{report['reference']}" + (f" (commit {report['resolved_commit']})" if report.get("resolved_commit") else "")
    ]
    if report["kind"] == "model":
        lines.append(f"assembled model, d = {report['dim']}, modalities: {', '.join(report['modalities'])}")
    for slot, info in report["components"].items():
        lines.append(f"  {slot}: {info['type']}  trainable {info['trainable']:,}  frozen {info['frozen']:,}")
        key_config = ", ".join(f"{k}={v}" for k, v in info["config"].items())
        lines.append(f"      config: {key_config}")
        provenance = []
        if info.get("requested"):
            provenance.append(f"from {info['requested']}")
        elif info.get("created"):
            provenance.append("created fresh at assembly")
        if info.get("resolved_commit"):
            provenance.append(f"commit {info['resolved_commit']}")
        provenance.append(f"weights sha256 {info['sha256'][:16]}")
        lines.append("      " + ", ".join(provenance))
    return "\n".join(lines)


def push(
    folder: str | os.PathLike[str],
    repo: str,
    *,
    tag: str | None = None,
    token: str | None = None,
    private: bool = False,
    api: Any = None,
) -> str:
    """Publish a component or assembled-model folder to the Hub; returns the commit id."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        Component.from_folder(folder)  # refuse to publish something that does not load
    elif (folder / MANIFEST_FILE).is_file():
        PMMRec.from_pretrained(folder)
    return push_folder(folder, repo, tag=tag, token=token, private=private, api=api)
