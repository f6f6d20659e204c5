"""`item_tower/id`: classic item-ID embeddings, for the SASRec baseline on the same split.

Rows that no training run trained (items unknown at training time: in no training sequence, issue 24) are zeros and
listed in `untrained_rows.json`. Evaluation gives them one documented constant score, below every trained item:
they never outrank a trained item, and a target without a trained row ranks after every trained candidate (ties
among untrained items count in the user's favour, as every tie does). A random-init row would instead score by
chance.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import ItemTower
from pmmrec.components.options import CreateOptions
from pmmrec.errors import ArtefactError, ConfigError
from pmmrec.jsonfile import read_json_file

ITEM_IDS_FILE = "item_ids.json"
UNTRAINED_FILE = "untrained_rows.json"
MAX_ID_BYTES = 511  # as a dataset's item ids (an LMDB key)


class IdItemTowerConfig(ComponentConfig):
    """An embedding table over one platform's catalogue (row 0 = padding)."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")
    num_items: int = Field(ge=1, le=50_000_000, description="Catalogue size (rows = num_items + 1).")

    def parameter_estimate(self) -> int:
        return (self.num_items + 1) * self.dim


@register_component
class IdItemTower(ItemTower):
    """One learned vector per catalogue item: cannot transfer to new items, which is the point of comparing."""

    type_name: ClassVar[str] = "item_tower/id"
    config_class: ClassVar[type[ComponentConfig]] = IdItemTowerConfig
    config: IdItemTowerConfig

    def __init__(self, config: IdItemTowerConfig, item_ids: list[str] | None = None) -> None:
        super().__init__(config)
        if item_ids is not None and len(item_ids) != config.num_items:
            raise ValueError(f"{len(item_ids)} item ids for num_items={config.num_items}")
        self.item_ids = item_ids
        # Dataset catalogue index -> own row, set by bind_catalogue (None: the dataset's order is the tower's own).
        self.row_of: torch.Tensor | None = None
        # Own rows (1-based) without a trained embedding: set by `train_only`, saved in UNTRAINED_FILE.
        self.untrained_rows: list[int] = []
        self.embeddings = nn.Embedding(config.num_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        with torch.no_grad():
            self.embeddings.weight[0].zero_()

    @classmethod
    def create(cls, options: CreateOptions) -> IdItemTower:
        """A fresh embedding table over `options.item_ids` (their order is the row order)."""
        if not options.item_ids:
            raise ValueError("an ID item tower needs the catalogue's item ids")
        dim = options.width
        return cls(IdItemTowerConfig(dim=dim, num_items=len(options.item_ids)), item_ids=list(options.item_ids))

    @classmethod
    def build_for_loading(cls, config: ComponentConfig, folder: Path) -> IdItemTower:
        assert isinstance(config, IdItemTowerConfig)
        path = folder / ITEM_IDS_FILE
        item_ids = None
        if os.path.lexists(path):
            # At most MAX_ID_BYTES per id (quoted, escaped as \uXXXX) plus separators: bounded before reading.
            limit = config.num_items * (3 * MAX_ID_BYTES + 4) + 2
            item_ids = read_json_file(path, error=ArtefactError, max_bytes=min(limit, 2 << 30), max_depth=2)
            if not isinstance(item_ids, list) or not all(isinstance(x, str) and x for x in item_ids):
                raise ArtefactError(f"{path}: expected a list of non-empty item id strings")
            if len(item_ids) != config.num_items:
                raise ArtefactError(f"{path}: {len(item_ids)} ids but config.json says num_items={config.num_items}")
            if len(set(item_ids)) != len(item_ids):
                twice = next(item_id for item_id, count in Counter(item_ids).items() if count > 1)
                raise ArtefactError(f"{path}: item id {twice!r} names two rows")
        tower = cls(config, item_ids=item_ids)
        untrained = folder / UNTRAINED_FILE
        if untrained.is_file():
            rows = read_json_file(untrained, error=ArtefactError, max_bytes=min(config.num_items * 12 + 2, 2 << 30), max_depth=2)
            valid = isinstance(rows, list) and all(type(r) is int and 1 <= r <= config.num_items for r in rows)
            if not valid:
                raise ArtefactError(f"{untrained}: expected a list of row numbers in 1..{config.num_items}")
            tower.untrained_rows = sorted(set(rows))
        return tower

    def save_extra_files(self, folder: Path) -> None:
        if self.item_ids is not None:
            (folder / ITEM_IDS_FILE).write_text(json.dumps(self.item_ids), encoding="utf-8")
        if self.untrained_rows:
            (folder / UNTRAINED_FILE).write_text(json.dumps(self.untrained_rows), encoding="utf-8")

    def card_summary(self) -> str:
        return f"Item-ID embedding table ({self.config.num_items:,} items, d = {self.config.dim}); catalogue in `{ITEM_IDS_FILE}`."

    def bind_catalogue(self, item_ids: Sequence[str]) -> None:
        """Map a dataset's catalogue (its items.tsv order) onto the rows of the ids this tower was trained on."""
        if self.item_ids is None:  # an artefact without item_ids.json: only the row count can be checked
            if len(item_ids) != self.config.num_items:
                raise ConfigError(
                    f"the ID item tower has {self.config.num_items:,} items and no {ITEM_IDS_FILE}; "
                    f"the dataset has {len(item_ids):,}"
                )
            self.row_of = None
            return
        own = {item_id: row for row, item_id in enumerate(self.item_ids, start=1)}
        unknown = [item_id for item_id in item_ids if item_id not in own]
        if unknown:
            shown = ", ".join(repr(item_id) for item_id in unknown[:5])
            raise ConfigError(
                f"the ID item tower does not know {len(unknown):,} of the dataset's {len(item_ids):,} item ids "
                f"(for example {shown}): an ID model only ranks the items it was trained on"
            )
        rows = [0, *(own[item_id] for item_id in item_ids)]
        identity = rows == list(range(len(rows))) and len(rows) == self.config.num_items + 1
        device = self.embeddings.weight.device
        self.row_of = None if identity else torch.tensor(rows, dtype=torch.long, device=device)

    def _rows(self, catalogue_indices: torch.Tensor) -> torch.Tensor:
        """Own rows of dataset catalogue indices (after bind_catalogue)."""
        if self.row_of is None:
            return catalogue_indices
        return self.row_of.to(catalogue_indices.device)[catalogue_indices]

    def train_only(self, catalogue_indices: torch.Tensor) -> None:
        """Only these catalogue items (the items known at training time) get a trained row: every other row is set
        to zeros and listed as untrained, so it neither scores by chance nor is mistaken for a trained one."""
        trained = torch.zeros(self.config.num_items + 1, dtype=torch.bool)
        trained[self._rows(catalogue_indices.cpu())] = True
        trained[0] = True  # padding: not an item
        rows = torch.nonzero(~trained).flatten()
        with torch.no_grad():
            self.embeddings.weight[rows.to(self.embeddings.weight.device)] = 0.0
        self.untrained_rows = rows.tolist()

    def untrained_indices(self, num_items: int) -> torch.Tensor:
        """Dataset catalogue indices (1..num_items, after bind_catalogue) whose row was never trained, sorted."""
        if not self.untrained_rows:
            return torch.zeros(0, dtype=torch.long)
        untrained = torch.zeros(self.config.num_items + 1, dtype=torch.bool)
        untrained[torch.as_tensor(self.untrained_rows, dtype=torch.long)] = True
        indices = torch.arange(1, num_items + 1)
        return indices[untrained[self._rows(indices)]]

    def forward(self, item_indices: torch.Tensor) -> torch.Tensor:
        if self.row_of is not None:
            item_indices = self.row_of.to(item_indices.device)[item_indices]
        return self.embeddings(item_indices)
