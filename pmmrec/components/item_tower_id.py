"""`item_tower/id`: classic item-ID embeddings, for the SASRec baseline on the same split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import ItemTower
from pmmrec.components.options import CreateOptions
from pmmrec.errors import ArtefactError
from pmmrec.jsonfile import read_json_file

ITEM_IDS_FILE = "item_ids.json"


class IdItemTowerConfig(ComponentConfig):
    """An embedding table over one platform's catalogue (row 0 = padding)."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")
    num_items: int = Field(ge=1, le=50_000_000, description="Catalogue size (rows = num_items + 1).")


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
        path = folder / ITEM_IDS_FILE
        item_ids = None
        if path.is_file():
            item_ids = read_json_file(path, error=ArtefactError, max_bytes=2 << 30, max_depth=2)
            if not isinstance(item_ids, list) or not all(isinstance(x, str) for x in item_ids):
                raise ArtefactError(f"{path}: expected a list of item id strings")
            if len(item_ids) != config.num_items:  # type: ignore[attr-defined]
                raise ArtefactError(f"{path}: {len(item_ids)} ids but config.json says num_items={config.num_items}")  # type: ignore[attr-defined]
        return cls(config, item_ids=item_ids)  # type: ignore[arg-type]

    def save_extra_files(self, folder: Path) -> None:
        if self.item_ids is not None:
            (folder / ITEM_IDS_FILE).write_text(json.dumps(self.item_ids), encoding="utf-8")

    def card_summary(self) -> str:
        return f"Item-ID embedding table ({self.config.num_items:,} items, d = {self.config.dim}); catalogue in `{ITEM_IDS_FILE}`."

    def forward(self, item_indices: torch.Tensor) -> torch.Tensor:
        return self.embeddings(item_indices)
