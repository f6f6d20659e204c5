"""Assembly: load the components named by reference, check they fit together, create what must exist.

Works on components and plain data; `PMMRec.assemble` wraps it. Compatibility is checked before anything is
written, with an error naming the slots at fault.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pmmrec.components import SLOT_KINDS, Component, CreateOptions, create_component, default_heads
from pmmrec.errors import AssemblyError
from pmmrec.model.manifest import ComponentSource
from pmmrec.references import resolve_reference
from pmmrec.slots import CONTENT_SLOTS, ID_TOWER_SLOT, MODALITY_SLOTS, SLOT, SLOTS

ComponentLike = Component | str | os.PathLike[str] | None


def load_slot(slot: str, reference: ComponentLike) -> tuple[Component | None, ComponentSource | None]:
    """Load the component named for `slot` (a Component passes through) and record its source."""
    if reference is None:
        return None, None
    expected = SLOT_KINDS[slot]
    flag = SLOT[slot].flag
    if isinstance(reference, Component):
        if not isinstance(reference, expected):
            raise AssemblyError(f"{flag}: got a {reference.type_name!r}, not a {expected.kind}")
        return reference, ComponentSource(requested=None, resolved_commit=None, created=False)
    resolved = resolve_reference(str(reference))
    component = Component.from_folder(resolved.path)
    if not isinstance(component, expected):
        raise AssemblyError(f"{flag} {reference}: is a {component.type_name!r} component, not a {expected.kind}")
    return component, ComponentSource(requested=str(reference), resolved_commit=resolved.commit, created=False)


def common_width(components: Mapping[str, Component | None]) -> int | None:
    """The embedding width d the given components share (None when none is given); refused when they disagree,
    naming every slot's width."""
    dims = {slot: component.dim for slot, component in components.items() if component is not None}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{slot} d={dim}" for slot, dim in dims.items())
        raise AssemblyError(f"components disagree on the embedding width: {listing}")
    return next(iter(dims.values()), None)


def check_compatible(components: Mapping[str, Component | None]) -> None:
    """Refuse combinations of components (by slot) that cannot work, before anything is written."""
    present = {slot: component for slot, component in components.items() if component is not None}
    if "user" not in present:
        raise AssemblyError("a model needs a user encoder")
    if ID_TOWER_SLOT in present:
        extra = [slot for slot in CONTENT_SLOTS if slot in present]
        if extra:
            raise AssemblyError(f"an ID item tower replaces the content tower; remove {', '.join(extra)}")
    else:
        modalities = {slot for slot in MODALITY_SLOTS if slot in present}
        if not modalities:
            raise AssemblyError(f"no item modality: give {_encoder_choices(flags=False)}")
        fusion = present.get("fusion")
        if fusion is None:
            raise AssemblyError("a content item tower needs a fusion component")
        needed = set(getattr(fusion, "modalities", set()))
        if needed - modalities:
            raise AssemblyError(
                f"fusion {fusion.type_name!r} needs {', '.join(sorted(needed - modalities))}, which is absent"
            )
        if modalities - needed:
            raise AssemblyError(
                f"fusion {fusion.type_name!r} does not use {', '.join(sorted(modalities - needed))}; "
                "drop that encoder or use a fusion that reads it"
            )
    common_width(present)


def _encoder_choices(flags: bool) -> str:
    """'a text encoder (--text), a vision encoder (--vision), or both': the encoders of the slot table."""
    named = [f"a {SLOT[slot].title.lower()}" + (f" ({SLOT[slot].flag})" if flags else "") for slot in MODALITY_SLOTS]
    if len(named) == 1:
        return named[0]
    return ", ".join(named) + (", or both" if len(named) == 2 else ", or several")


def assemble_parts(
    references: Mapping[str, ComponentLike], user_options: dict[str, Any] | None = None
) -> tuple[dict[str, Component | None], dict[str, ComponentSource], list[str]]:
    """Load each slot's reference, check widths, and create the fusion and user encoder where missing.

    Returns the components by slot, their sources and notes saying what was created.
    """
    loaded: dict[str, Component | None] = {}
    sources: dict[str, ComponentSource] = {}
    for slot in SLOTS:
        component, source = load_slot(slot, references.get(slot))
        loaded[slot] = component
        if source is not None:
            sources[slot] = source
    if all(loaded[slot] is None for slot in (*MODALITY_SLOTS, ID_TOWER_SLOT)):
        raise AssemblyError(f"no item modality: give {_encoder_choices(flags=True)}")
    dim = common_width(loaded)
    assert dim is not None
    notes: list[str] = []
    created = ComponentSource(requested=None, resolved_commit=None, created=True)
    if loaded["fusion"] is None and loaded[ID_TOWER_SLOT] is None:
        present = [slot for slot in MODALITY_SLOTS if loaded[slot] is not None]
        variant = "merge_attention" if len(present) > 1 else f"{present[0]}_only"
        fusion = create_component("fusion", CreateOptions(dim=dim, modalities=tuple(present)), variant)
        loaded["fusion"] = fusion
        sources["fusion"] = created
        if variant == "merge_attention":
            heads = default_heads(dim, 12)
            notes.append(f"created a fresh fusion/merge_attention (d={dim}, {heads} heads) for {' + '.join(present)}")
        else:
            notes.append(f"using the {present[0]}-only item tower (fusion/{variant}, no weights)")
    if loaded["user"] is None:
        loaded["user"] = create_component("user", CreateOptions(dim=dim, **(user_options or {})))
        notes.append(f"created a fresh user_encoder/sasrec (d={dim})")
        sources["user"] = created
    return loaded, sources, notes
