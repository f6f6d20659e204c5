"""The assembled PMMRec model: any compatible combination of components, with a lockfile-style manifest."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pmmrec import __version__, integrity
from pmmrec.components import (
    Component,
    Fusion,
    ItemTower,
    MergeAttentionConfig,
    MergeAttentionFusion,
    SASRecConfig,
    SASRecUserEncoder,
    TextEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
    UserEncoder,
    VisionEncoder,
    VisionOnlyConfig,
    VisionOnlyFusion,
)
from pmmrec.components.base import WEIGHTS_FILE
from pmmrec.components.kinds import masked_mean
from pmmrec.errors import ArtefactError, AssemblyError
from pmmrec.fileio import atomic_directory, sha256_file
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover
from pmmrec.references import resolve_reference
from pmmrec.schemas import ManifestFile

MANIFEST_FILE = "pmmrec.json"
MODEL_FORMAT_VERSION = 1
SLOT_KINDS: dict[str, type[Component]] = {
    "text": TextEncoder,
    "vision": VisionEncoder,
    "fusion": Fusion,
    "user": UserEncoder,
    "item_tower": ItemTower,
}


@dataclass
class ComponentSource:
    """Where one component of an assembled model came from."""

    requested: str | None  # the reference as the user gave it; None when created fresh
    resolved_commit: str | None  # the commit a hub revision resolved to
    created: bool  # True when assembly created the component fresh


@dataclass
class ItemEncoding:
    """Item embeddings [N, d], plus per-modality pooled states used by the NICL objective."""

    embeddings: torch.Tensor
    text_pooled: torch.Tensor | None = None
    image_pooled: torch.Tensor | None = None


ComponentLike = Component | str | os.PathLike[str] | None


def _largest_divisor_at_most(value: int, limit: int) -> int:
    return max(h for h in range(1, min(value, limit) + 1) if value % h == 0)


def load_slot(slot: str, reference: ComponentLike) -> tuple[Component | None, ComponentSource | None]:
    """Load the component named for `slot` (a Component passes through) and record its source."""
    if reference is None:
        return None, None
    expected = SLOT_KINDS[slot]
    if isinstance(reference, Component):
        if not isinstance(reference, expected):
            raise AssemblyError(f"--{slot.replace('_', '-')}: got a {reference.type_name!r}, not a {expected.kind}")
        return reference, ComponentSource(requested=None, resolved_commit=None, created=False)
    resolved = resolve_reference(str(reference))
    component = Component.from_folder(resolved.path)
    if not isinstance(component, expected):
        raise AssemblyError(
            f"--{slot.replace('_', '-')} {reference}: is a {component.type_name!r} component, not a {expected.kind}"
        )
    return component, ComponentSource(requested=str(reference), resolved_commit=resolved.commit, created=False)


class PMMRec(nn.Module):
    """Item tower (text and/or vision encoders + fusion, or ID embeddings) and a user encoder."""

    def __init__(
        self,
        user: UserEncoder,
        text: TextEncoder | None = None,
        vision: VisionEncoder | None = None,
        fusion: Fusion | None = None,
        item_tower: ItemTower | None = None,
        sources: dict[str, ComponentSource] | None = None,
    ) -> None:
        super().__init__()
        check_compatible(text=text, vision=vision, fusion=fusion, user=user, item_tower=item_tower)
        self.text = text
        self.vision = vision
        self.fusion = fusion
        self.user = user
        self.item_tower = item_tower
        self.sources: dict[str, ComponentSource] = sources or {}
        self.assembly_notes: list[str] = []

    # ---- structure ----------------------------------------------------------------------------

    def components(self) -> dict[str, Component]:
        """The present components by slot name."""
        slots = {slot: getattr(self, slot) for slot in SLOT_KINDS}
        return {slot: component for slot, component in slots.items() if component is not None}

    @property
    def modalities(self) -> frozenset[str]:
        """Which item modalities the model reads: {'text'}, {'vision'}, both, or {'id'}."""
        if self.item_tower is not None:
            return frozenset({"id"})
        return frozenset(name for name, enc in (("text", self.text), ("vision", self.vision)) if enc is not None)

    @property
    def dim(self) -> int:
        return self.user.dim

    @property
    def max_length(self) -> int:
        return int(self.user.config.max_length)  # type: ignore[attr-defined]

    # ---- forward pieces -----------------------------------------------------------------------

    def encode_items(
        self,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        item_indices: torch.Tensor | None = None,
        text_prefix: torch.Tensor | None = None,
        image_prefix: torch.Tensor | None = None,
    ) -> ItemEncoding:
        """Embed N items from their content (or IDs); a cached frozen prefix may replace raw inputs."""
        if self.item_tower is not None:
            if item_indices is None:
                raise ValueError("an ID item tower needs item_indices")
            return ItemEncoding(embeddings=self.item_tower(item_indices))
        text_tokens = image_tokens = None
        if self.text is not None:
            if text_mask is None:
                raise ValueError("the text encoder needs text_mask")
            # Drop token columns that are padding for every item of the batch: same result, less work.
            width = max(int(text_mask.sum(dim=1).max()), 1) if text_mask.shape[0] else text_mask.shape[1]
            text_mask = text_mask[:, :width]
            text_ids = text_ids[:, :width] if text_ids is not None else None
            text_prefix = text_prefix[:, :width] if text_prefix is not None else None
            if text_prefix is not None:
                text_tokens, text_mask = self.text.forward_from_prefix(text_prefix, text_mask)  # type: ignore[attr-defined]
            elif text_ids is not None:
                text_tokens, text_mask = self.text(text_ids, text_mask)
            else:
                raise ValueError("the text encoder needs text_ids (or a cached prefix)")
        if self.vision is not None:
            if image_prefix is not None:
                image_tokens = self.vision.forward_from_prefix(image_prefix)  # type: ignore[attr-defined]
            elif pixel_values is not None:
                image_tokens = self.vision(pixel_values)
            else:
                raise ValueError("the vision encoder needs pixel_values (the dataset has no images.lmdb?)")
        assert self.fusion is not None
        embeddings = self.fusion(text_tokens=text_tokens, text_mask=text_mask, image_tokens=image_tokens)
        return ItemEncoding(
            embeddings=embeddings,
            text_pooled=masked_mean(text_tokens, text_mask) if text_tokens is not None else None,
            image_pooled=masked_mean(image_tokens, None) if image_tokens is not None else None,
        )

    def encode_users(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User states [B, S, d] for left-padded sequences of item embeddings."""
        return self.user(item_embeddings, mask)

    # ---- assembly -----------------------------------------------------------------------------

    @classmethod
    def assemble(
        cls,
        text: ComponentLike = None,
        vision: ComponentLike = None,
        fusion: ComponentLike = None,
        user: ComponentLike = None,
        item_tower: ComponentLike = None,
        user_config: dict[str, Any] | None = None,
    ) -> PMMRec:
        """Combine components given as objects or references; create what must exist and is missing.

        The notes of what was created are in `model.assembly_notes`.
        """
        loaded: dict[str, Component | None] = {}
        sources: dict[str, ComponentSource] = {}
        for slot, reference in (
            ("text", text),
            ("vision", vision),
            ("fusion", fusion),
            ("user", user),
            ("item_tower", item_tower),
        ):
            component, source = load_slot(slot, reference)
            loaded[slot] = component
            if source is not None:
                sources[slot] = source
        notes: list[str] = []
        present = [c for c in loaded.values() if c is not None]
        if loaded["text"] is None and loaded["vision"] is None and loaded["item_tower"] is None:
            raise AssemblyError("no item modality: give a text encoder (--text), a vision encoder (--vision), or both")
        dims = {slot: c.dim for slot, c in loaded.items() if c is not None}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{slot} d={dim}" for slot, dim in dims.items())
            raise AssemblyError(f"components disagree on the embedding width: {listing}")
        dim = next(iter(dims.values())) if present else None
        if dim is None:
            raise AssemblyError("nothing to assemble")
        if loaded["fusion"] is None and loaded["item_tower"] is None:
            if loaded["text"] is not None and loaded["vision"] is not None:
                heads = _largest_divisor_at_most(dim, 12)
                loaded["fusion"] = MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads))
                notes.append(f"created a fresh fusion/merge_attention (d={dim}, {heads} heads) for text + vision")
            elif loaded["text"] is not None:
                loaded["fusion"] = TextOnlyFusion(TextOnlyConfig(dim=dim))
                notes.append("using the text-only item tower (fusion/text_only, no weights)")
            else:
                loaded["fusion"] = VisionOnlyFusion(VisionOnlyConfig(dim=dim))
                notes.append("using the vision-only item tower (fusion/vision_only, no weights)")
            sources["fusion"] = ComponentSource(requested=None, resolved_commit=None, created=True)
        if loaded["user"] is None:
            options = {"heads": _largest_divisor_at_most(dim, 2), **(user_config or {})}
            loaded["user"] = SASRecUserEncoder(SASRecConfig(dim=dim, **options))
            notes.append(f"created a fresh user_encoder/sasrec (d={dim})")
            sources["user"] = ComponentSource(requested=None, resolved_commit=None, created=True)
        model = cls(
            user=loaded["user"],  # type: ignore[arg-type]
            text=loaded["text"],  # type: ignore[arg-type]
            vision=loaded["vision"],  # type: ignore[arg-type]
            fusion=loaded["fusion"],  # type: ignore[arg-type]
            item_tower=loaded["item_tower"],  # type: ignore[arg-type]
            sources=sources,
        )
        model.assembly_notes = notes
        return model

    # ---- persistence --------------------------------------------------------------------------

    def manifest(
        self, weight_hashes: dict[str, str], file_hashes: dict[str, dict[str, str]] | None = None
    ) -> dict[str, Any]:
        """The content of pmmrec.json: each component's type, source, weight hash and every file's hash."""
        entries = {}
        for slot, component in self.components().items():
            source = self.sources.get(slot, ComponentSource(requested=None, resolved_commit=None, created=True))
            entries[slot] = {
                "type": component.type_name,
                "path": slot,
                **asdict(source),
                "sha256": weight_hashes[slot],
                **({"files": file_hashes[slot]} if file_hashes is not None else {}),
            }
        return {
            "pmmrec_type": "model/pmmrec",
            "format_version": MODEL_FORMAT_VERSION,
            "pmmrec_version": __version__,
            "dim": self.dim,
            "modalities": sorted(self.modalities),
            "components": entries,
        }

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, overwrite: bool = False, card: dict[str, Any] | None = None
    ) -> Path:
        """One subfolder per component plus pmmrec.json; atomic, never a silent overwrite."""
        target = Path(directory)
        with atomic_directory(target, overwrite=overwrite) as staging:
            hashes, files = {}, {}
            for slot, component in self.components().items():
                component.save_pretrained(staging / slot, card=card)
                hashes[slot] = sha256_file(staging / slot / WEIGHTS_FILE)
                files[slot] = integrity.file_checksums(staging / slot)
            manifest = self.manifest(hashes, files)
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            (staging / "README.md").write_text(_model_card(manifest, card or {}), encoding="utf-8")
        return target

    @classmethod
    def from_pretrained(
        cls, reference: str | os.PathLike[str], revision: str | None = None, *, unverified: bool = False
    ) -> PMMRec:
        """Reload an assembled model folder (or hub reference); every file's hash is verified first.

        `unverified=True` loads a model whose manifest pins only the weights (written before pmmrec kept checksums)
        or whose files changed.
        """
        resolved = resolve_reference(str(reference), revision=revision)
        manifest = read_manifest(resolved.path)
        loaded: dict[str, Component] = {}
        sources: dict[str, ComponentSource] = {}
        for slot, entry in manifest["components"].items():
            folder = resolved.path / entry["path"]
            checksums = integrity.manifest_checksums(entry, slot, str(resolved.path / MANIFEST_FILE), unverified)
            component = Component.from_folder(
                folder, unverified=unverified, checksums=checksums, checksums_source=MANIFEST_FILE
            )
            if component.type_name != entry["type"]:
                raise ArtefactError(f"{folder}: is {component.type_name!r} but {MANIFEST_FILE} says {entry['type']!r}")
            loaded[slot] = component
            sources[slot] = ComponentSource(
                requested=entry.get("requested"),
                resolved_commit=entry.get("resolved_commit"),
                created=entry.get("created", False),
            )
        if "user" not in loaded:
            raise ArtefactError(f"{resolved.path / MANIFEST_FILE}: no user component")
        try:
            model = cls(sources=sources, **loaded)  # type: ignore[arg-type]
        except AssemblyError as exc:
            raise ArtefactError(f"{resolved.path / MANIFEST_FILE}: {exc}") from None
        model.eval()
        return model


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
        if slot not in SLOT_KINDS:
            raise ArtefactError(f"{path}: unknown component slot {slot!r} (known: {sorted(SLOT_KINDS)})")
        if not isinstance(entry, dict) or not {"type", "path", "sha256"} <= entry.keys():
            raise ArtefactError(f"{path}: components.{slot} needs type, path and sha256")
        if entry["path"] != slot:
            raise ArtefactError(f"{path}: components.{slot}.path must be {slot!r}")
    validate_strictly(ManifestFile, manifest, str(path), error=ArtefactError)
    return manifest


def check_compatible(
    *,
    text: Component | None,
    vision: Component | None,
    fusion: Component | None,
    user: Component | None,
    item_tower: Component | None,
) -> None:
    """Refuse combinations that cannot work, before anything is written."""
    if user is None:
        raise AssemblyError("a model needs a user encoder")
    if item_tower is not None:
        extra = [slot for slot, c in (("text", text), ("vision", vision), ("fusion", fusion)) if c is not None]
        if extra:
            raise AssemblyError(f"an ID item tower replaces the content tower; remove {', '.join(extra)}")
    else:
        present = {name for name, enc in (("text", text), ("vision", vision)) if enc is not None}
        if not present:
            raise AssemblyError("no item modality: give a text encoder, a vision encoder, or both")
        if fusion is None:
            raise AssemblyError("a content item tower needs a fusion component")
        needed = set(getattr(fusion, "modalities", set()))
        if needed - present:
            raise AssemblyError(
                f"fusion {fusion.type_name!r} needs {', '.join(sorted(needed - present))}, which is absent"
            )
        if present - needed:
            raise AssemblyError(
                f"fusion {fusion.type_name!r} does not use {', '.join(sorted(present - needed))}; "
                "drop that encoder or use a fusion that reads it"
            )
    dims = {
        slot: c.dim
        for slot, c in (
            ("text", text),
            ("vision", vision),
            ("fusion", fusion),
            ("user", user),
            ("item_tower", item_tower),
        )
        if c is not None
    }
    if len(set(dims.values())) > 1:
        raise AssemblyError(
            "components disagree on the embedding width: " + ", ".join(f"{s} d={d}" for s, d in dims.items())
        )


def _model_card(manifest: dict[str, Any], card: dict[str, Any]) -> str:
    import yaml

    metadata = {"library_name": "pmmrec", "tags": ["pmmrec", "recommendation", "sequential-recommendation"]}
    if card.get("datasets"):
        metadata["datasets"] = list(card["datasets"])
    rows = "\n".join(
        f"| {slot} | `{entry['type']}` | {entry.get('requested') or ('created fresh' if entry.get('created') else 'given in code')} "
        f"| {entry.get('resolved_commit') or '-'} | `{entry['sha256'][:16]}` |"
        for slot, entry in manifest["components"].items()
    )
    metrics = card.get("metrics") or {}
    metric_lines = "\n".join(
        f"- {split}: " + ", ".join(f"{k} = {v:.4f}" for k, v in values.items()) for split, values in metrics.items()
    )
    return (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False).strip()}\n---\n\n"
        f"# {card.get('name', 'pmmrec model')}\n\n"
        f"An assembled pmmrec model (d = {manifest['dim']}, modalities: {', '.join(manifest['modalities'])}). "
        "Each component is in its own subfolder; `pmmrec.json` pins where each came from and the sha256 of its weights.\n\n"
        '```python\nfrom pmmrec import PMMRec\n\nmodel = PMMRec.from_pretrained("PATH_OR_hub:ORG/NAME@REV")\n```\n\n'
        "| slot | type | requested | resolved commit | weights sha256 |\n|---|---|---|---|---|\n"
        f"{rows}\n\n" + (f"## Metrics\n\n{metric_lines}\n" if metric_lines else "")
    )
