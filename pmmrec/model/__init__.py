"""The assembled model: the module (`PMMRec`), assembly of components, and the pmmrec.json manifest."""

from pmmrec.model.assembly import SLOT_KINDS, check_compatible, load_slot
from pmmrec.model.manifest import MANIFEST_FILE, ComponentSource, read_manifest
from pmmrec.model.pmmrec import ItemEncoding, PMMRec, load_model_component, modalities_of, read_model_split_record

__all__ = [
    "MANIFEST_FILE",
    "SLOT_KINDS",
    "ComponentSource",
    "ItemEncoding",
    "PMMRec",
    "check_compatible",
    "load_model_component",
    "load_slot",
    "modalities_of",
    "read_manifest",
    "read_model_split_record",
]
