"""What `pmmrec inspect` reports: type, key config, parameter counts and provenance of a component or a model."""

from __future__ import annotations

from typing import Any

from pmmrec.components import Component, ItemEncoder
from pmmrec.components.base import CONFIG_FILE, WEIGHTS_FILE
from pmmrec.errors import ArtefactError
from pmmrec.fileio import sha256_file
from pmmrec.model import MANIFEST_FILE, PMMRec, read_manifest
from pmmrec.references import resolve_reference


def describe_options(component: Component) -> dict[str, Any]:
    """The key architecture fields of a component (the backbone's own config left out)."""
    fields = component.config.model_dump(mode="json")
    fields.pop("backbone_config", None)
    if isinstance(component, ItemEncoder):
        fields["backbone_layers"] = component.num_layers
    return fields


def _describe(component: Component) -> dict[str, Any]:
    trainable, frozen = component.parameter_counts()
    return {"type": component.type_name, "config": describe_options(component), "trainable": trainable, "frozen": frozen}


def inspect_reference(reference: str, revision: str | None = None) -> dict[str, Any]:
    """A JSON-ready report on a component or assembled model given by folder or hub reference."""
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


def format_inspection(report: dict[str, Any]) -> str:
    """A readable rendering of `inspect_reference`'s report."""
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
