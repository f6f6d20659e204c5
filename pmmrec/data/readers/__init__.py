"""Where a dataset keeps each modality's raw item content, and that content as batch tensors: one reader per
modality, one file each (`text.py`: items.tsv's texts; `vision.py`: images.lmdb).

A reader (`ItemInputs`) is built for a dataset and the model's encoder of its modality (`from_dataset`): it
prepares inputs through the encoder's own preprocessor and hands the collator the batch tensors of any catalogue
indices (`rows`). Readers register by modality (`register_reader`); importing this package imports every module
beside this one, so a new modality's reader is its own file here and nothing else. Readers hold only picklable
state (stores open lazily in each process), so collators work in DataLoader workers.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch

from pmmrec.components import ItemEncoder, ModalityInputs
from pmmrec.errors import ConfigError
from pmmrec.slots import MODALITY_SLOTS

if TYPE_CHECKING:
    from pmmrec.data.dataset import Dataset

R = TypeVar("R", bound=type["ItemInputs"])


class ItemInputs(ABC):
    """One modality's inputs for the items of a catalogue (catalogue index i is item_ids[i - 1]; 0 is padding)."""

    modality: ClassVar[str]  # the slot table's modality this reader serves
    cache_label: ClassVar[str]  # names the frozen-prefix cache's files of this modality ("text", "image")
    table_names: ClassVar[tuple[str, ...]] = ()  # inputs held as whole-catalogue tables [N+1, ...] (see `tables`)
    mask_name: ClassVar[str | None] = None  # the input marking real tokens [N, T]: prefixes are then stored jagged
    reads_storage: ClassVar[bool] = False  # `rows` reads a store: left out of batches a prefix cache stands in for

    @classmethod
    @abstractmethod
    def provided_by(cls, dataset: Dataset) -> bool:
        """Whether the dataset holds this modality's content (a pretraining run reads every modality it holds)."""

    @classmethod
    @abstractmethod
    def from_dataset(cls, dataset: Dataset, encoder: ItemEncoder) -> ItemInputs:
        """The reader of `dataset`'s items for `encoder`; a DatasetError naming the file when the content is
        missing, a ConfigError when the encoder cannot prepare it."""

    @abstractmethod
    def rows(self, items: Sequence[int]) -> ModalityInputs:
        """The batch tensors of catalogue indices `items` (1..N), one row each, as the encoder's `tokens` reads them."""

    @abstractmethod
    def digest(self) -> bytes:
        """A digest of every item's prepared input: part of the frozen-prefix cache's key (a stale cache is never
        used)."""

    def tables(self) -> list[torch.Tensor]:
        """The whole-catalogue tables named by `table_names` (keyed into a resumable evaluation's results)."""
        return []

    def lengths(self) -> torch.Tensor | None:
        """Real tokens per item [N+1] when `mask_name` is set (catalogue chunks in length order pad little)."""
        return None

    def token_mask(self) -> torch.Tensor | None:
        """The whole catalogue's token mask [N+1, T] when `mask_name` is set (the jagged prefix store's layout)."""
        return None


_READERS: dict[str, type[ItemInputs]] = {}


def register_reader(cls: R) -> R:
    """Class decorator: `cls` reads its modality's content from dataset folders."""
    if cls.modality not in MODALITY_SLOTS:
        raise ValueError(f"reader {cls.__name__}: {cls.modality!r} is no modality of pmmrec.slots")
    _READERS[cls.modality] = cls
    return cls


def reader_class(modality: str) -> type[ItemInputs]:
    """The reader registered for `modality`."""
    try:
        return _READERS[modality]
    except KeyError:
        raise ConfigError(f"no dataset reader for the {modality!r} modality (pmmrec/data/readers/)") from None


def registered_readers() -> dict[str, type[ItemInputs]]:
    """Every registered reader by modality, in the slot table's order."""
    return {modality: _READERS[modality] for modality in MODALITY_SLOTS if modality in _READERS}


def _import_reader_files() -> None:
    """Import every public module of this package, registering the readers it defines."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_reader_files()
