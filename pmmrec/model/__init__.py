"""The assembled model: the module (`PMMRec`), assembly of components, and the pmmrec.json manifest."""

from pmmrec.components import SLOT_KINDS
from pmmrec.model.assembly import check_compatible, common_width, load_slot
from pmmrec.model.folder import load_model_component, read_model_split_record
from pmmrec.model.manifest import MANIFEST_FILE, ComponentSource, read_manifest
from pmmrec.model.pmmrec import ItemEncoding, PMMRec
from pmmrec.slots import modalities_of

__all__ = [
    "MANIFEST_FILE",
    "SLOT_KINDS",
    "ComponentSource",
    "ItemEncoding",
    "PMMRec",
    "check_compatible",
    "common_width",
    "load_model_component",
    "load_slot",
    "modalities_of",
    "read_manifest",
    "read_model_split_record",
]
