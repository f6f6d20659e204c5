"""Assembly: load the components named by reference, check they fit together, create what must exist.

Works on components and plain data; `PMMRec.assemble` wraps it. Compatibility is checked before anything is
written, with an error naming the slots at fault.
"""

from __future__ import annotations

import os
from typing import Any

from pmmrec.components import (
    Component,
    CreateOptions,
    Fusion,
    ItemTower,
    TextEncoder,
    UserEncoder,
    VisionEncoder,
    create_component,
    default_heads,
)
from pmmrec.errors import AssemblyError
from pmmrec.model.manifest import SLOTS, ComponentSource
from pmmrec.references import resolve_reference

SLOT_KINDS: dict[str, type[Component]] = dict(
    zip(SLOTS, (TextEncoder, VisionEncoder, Fusion, UserEncoder, ItemTower), strict=True)
)

ComponentLike = Component | str | os.PathLike[str] | None


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


def assemble_parts(
    references: dict[str, ComponentLike], user_options: dict[str, Any] | None = None
) -> tuple[dict[str, Component | None], dict[str, ComponentSource], list[str]]:
    """Load each slot's reference, check widths, and create the fusion and user encoder where missing.

    Returns the components by slot, their sources and notes saying what was created.
    """
    loaded: dict[str, Component | None] = {}
    sources: dict[str, ComponentSource] = {}
    for slot in SLOT_KINDS:
        component, source = load_slot(slot, references.get(slot))
        loaded[slot] = component
        if source is not None:
            sources[slot] = source
    if loaded["text"] is None and loaded["vision"] is None and loaded["item_tower"] is None:
        raise AssemblyError("no item modality: give a text encoder (--text), a vision encoder (--vision), or both")
    dims = {slot: c.dim for slot, c in loaded.items() if c is not None}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{slot} d={dim}" for slot, dim in dims.items())
        raise AssemblyError(f"components disagree on the embedding width: {listing}")
    dim = next(iter(dims.values()))
    notes: list[str] = []
    created = ComponentSource(requested=None, resolved_commit=None, created=True)
    if loaded["fusion"] is None and loaded["item_tower"] is None:
        present = [m for m in ("text", "vision") if loaded[m] is not None]
        variant = "merge_attention" if len(present) == 2 else f"{present[0]}_only"
        fusion = create_component("fusion", CreateOptions(dim=dim), variant)
        loaded["fusion"] = fusion
        sources["fusion"] = created
        if variant == "merge_attention":
            heads = default_heads(dim, 12)
            notes.append(f"created a fresh fusion/merge_attention (d={dim}, {heads} heads) for text + vision")
        else:
            notes.append(f"using the {present[0]}-only item tower (fusion/{variant}, no weights)")
    if loaded["user"] is None:
        loaded["user"] = create_component("user", CreateOptions(dim=dim, **(user_options or {})))
        notes.append(f"created a fresh user_encoder/sasrec (d={dim})")
        sources["user"] = created
    return loaded, sources, notes
