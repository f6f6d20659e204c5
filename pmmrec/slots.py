"""The slots of an assembled model, declared once: every slot list, subset, CLI choice and slot-to-kind mapping
of pmmrec is a view of `SLOT_TABLE`, taken by name (tests/test_architecture.py refuses a list of slot names
spelled out anywhere else).

A slot is a place in the model (`PMMRec.text`), a key of pmmrec.json and a training option (`--text`). Its *kind*
is the short name `pmmrec init` and `create_component` take; its *type prefix* starts the registered type names
of the components that fill it (`text_encoder/hf`). Plain data: no torch, so any layer may read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One place of an assembled model and what the rest of pmmrec needs to know about it."""

    name: str  # PMMRec attribute, pmmrec.json key, training config field
    kind: str  # the kind `pmmrec init` / `create_component` take (`id` for the ID item tower)
    type_prefix: str  # registered type names of this slot's components start with `<type_prefix>/`
    modality: str | None  # the item input it reads (text, vision, the item id); None: other components' outputs
    item_side: bool  # part of the item tower (frozen with it; encoded once per epoch when all of it is frozen)
    pretrained: bool  # wraps a pretrained backbone (trained at pretrained_lr by default, the rest at fresh_lr)
    content: bool  # part of the content item tower (what an ID item tower replaces)
    reference: bool  # given by reference to `assemble`, `pretrain` and `finetune` (--text, --vision, ...)
    init: bool  # `pmmrec init` creates one (the ID item tower needs a dataset's catalogue instead)
    title: str  # how option help texts name it ("Text encoder: hub:ORG/NAME...")
    backbone: str | None = None  # an encoder: the backbone of a fresh one (`--text-backbone`'s default)
    layers_word: str = "layers"  # an encoder: what its trainable units are called in help texts
    paper: bool = False  # an encoder of the paper's model (text and images: NICL, merge-attention, the demo's rows)

    @property
    def flag(self) -> str:
        """The command-line option naming this slot (`--item-tower`)."""
        return "--" + self.name.replace("_", "-")

    @property
    def encoder(self) -> bool:
        """Reads an item's raw content (a text or vision encoder): an item modality of a content tower."""
        return self.content and self.modality is not None

    @property
    def reference_help(self) -> str:
        """The help text of the option naming this slot's component by reference (`--text`, `--fusion`)."""
        if self.pretrained:
            return (
                f"{self.title}: hub:ORG/NAME[@REV], hf://... or a folder (default: none; a fresh one on "
                f"{self.flag}-backbone when the run reads {self.modality}: see --modality)."
            )
        return f"{self.title} reference (default: none, created fresh)."


# An item modality is a row with `modality` set and `content` true (an encoder): its encoder kind and types live in
# pmmrec/components/ (the kind declares how raw content becomes batch tensors and token states), its dataset reader
# in pmmrec/data/readers/ (where a dataset keeps the raw content); everything else is generic over these rows.
SLOT_TABLE: tuple[Slot, ...] = (
    Slot("text", kind="text", type_prefix="text_encoder", modality="text",
         item_side=True, pretrained=True, content=True, reference=True, init=True,
         title="Text encoder", backbone="minilm", paper=True),
    Slot("vision", kind="vision", type_prefix="vision_encoder", modality="vision",
         item_side=True, pretrained=True, content=True, reference=True, init=True,
         title="Vision encoder", backbone="efficientnet-lite0", layers_word="layers (blocks)", paper=True),
    Slot("fusion", kind="fusion", type_prefix="fusion", modality=None,
         item_side=True, pretrained=False, content=True, reference=True, init=True, title="Fusion"),
    Slot("user", kind="user", type_prefix="user_encoder", modality=None,
         item_side=False, pretrained=False, content=False, reference=True, init=True, title="User encoder"),
    Slot("item_tower", kind="id", type_prefix="item_tower", modality="id",
         item_side=True, pretrained=False, content=False, reference=False, init=False, title="ID item tower"),
)  # fmt: skip

SLOT: dict[str, Slot] = {slot.name: slot for slot in SLOT_TABLE}
assert all(slot.name == slot.modality for slot in SLOT_TABLE if slot.encoder), "an encoder slot is named by its modality"
SLOT_OF_KIND: dict[str, Slot] = {slot.kind: slot for slot in SLOT_TABLE}

# ---- derived views (all in table order) ---------------------------------------------------------------------------
SLOTS: tuple[str, ...] = tuple(SLOT)
KIND_NAMES: tuple[str, ...] = tuple(SLOT_OF_KIND)  # create_component's kinds
INIT_KINDS: tuple[str, ...] = tuple(slot.kind for slot in SLOT_TABLE if slot.init)  # `pmmrec init`'s choices
MODALITY_SLOTS: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if slot.encoder)  # item content encoders
# The paper's two modalities (text and images): what NICL contrasts, merge-attention merges by default, the demo's
# multimodal rows read. A modality added to the table is not one of them.
PAPER_MODALITIES: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if slot.encoder and slot.paper)
MODALITIES: tuple[str, ...] = tuple(slot.modality for slot in SLOT_TABLE if slot.modality)  # pmmrec.json's modalities
CONTENT_SLOTS: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if slot.content)  # what an ID tower replaces
ITEM_SIDE_SLOTS: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if slot.item_side)
REFERENCE_SLOTS: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if slot.reference)
FROM_SCRATCH_SLOTS: tuple[str, ...] = tuple(slot.name for slot in SLOT_TABLE if not slot.pretrained)
ID_TOWER_SLOT: str = SLOT_OF_KIND["id"].name


def modalities_of(slots: Iterable[str]) -> frozenset[str]:
    """The item modalities of a model with these slots filled: its encoders', or the item id with an ID tower."""
    present = set(slots)
    return frozenset(slot.modality for slot in SLOT_TABLE if slot.name in present and slot.modality)


def content_model_slots(modalities: Iterable[str]) -> tuple[str, ...]:
    """The slots of a content model reading `modalities`: those encoders, then every other content and reference
    slot (the fusion and the user encoder), in table order."""
    wanted = set(modalities)
    return tuple(slot.name for slot in SLOT_TABLE if (slot.name in wanted if slot.encoder else slot.reference))
