"""The rows of the transfer comparison and the settings they train at (shared by `pmmrec demo` and
benchmarks/quality.py).

A trained row is a model specification (which components, which are transferred) plus a fine-tuning
configuration: the next-item softmax, the learning rates of fresh and pretrained parts, and the dropout of a fresh
user encoder. benchmarks/quality.py searches at most eight configurations per row (SEARCH_GRID) on the validation
split and records the selected one; the demo trains each row at the configuration selected for its setting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from pmmrec.slots import PAPER_MODALITIES, REFERENCE_SLOTS

# Rows whose user encoder is created fresh for the run (their dropout is a choice); the others load a user encoder.
FRESH_USER_ROWS = ("sasrec-id", "pmmrec-scratch", "transfer-text-only", "mm-scratch")
TRAINED_ROWS = (
    "sasrec-id",
    "pmmrec-scratch",
    "pmmrec-transfer",
    "transfer-text-only",
    "transfer-user-only",
    "transfer-no-nid",
    "transfer-no-rcl",
    "mm-scratch",
    "mm-transfer",
    "mm-transfer-no-nicl",
)
DEMO_ROWS = ("sasrec-id", "pmmrec-scratch", "pmmrec-transfer")
# Which pre-training run each transferred row loads its components from.
PRETRAINING_OF = {
    "pmmrec-transfer": "text",
    "transfer-text-only": "text",
    "transfer-user-only": "text",
    "transfer-no-nid": "text-no-nid",
    "transfer-no-rcl": "text-no-rcl",
    "mm-transfer": "mm",
    "mm-transfer-no-nicl": "mm-no-nicl",
}


@dataclass(frozen=True)
class RowConfig:
    """One fine-tuning configuration of a row (what the search varies)."""

    softmax: str = "in_batch"
    fresh_lr: float = 1e-3
    pretrained_lr: float = 1e-4
    dropout: float = 0.1

    def overrides(self) -> dict[str, Any]:
        """Training-config overrides (nested like RUN/config.yaml)."""
        return {
            "fresh_lr": self.fresh_lr,
            "pretrained_lr": self.pretrained_lr,
            "objectives": {"next_item": {"softmax": self.softmax}},
        }

    def label(self) -> str:
        return f"{self.softmax}, lr {self.fresh_lr:g}/{self.pretrained_lr:g}, dropout {self.dropout:g}"


def search_grid(row: str) -> list[RowConfig]:
    """The eight configurations searched for a row.

    Rows with a fresh user encoder: softmax x (fresh, pretrained) learning rates {(1e-3, 1e-4), (3e-3, 3e-4)} x
    dropout {0.1, 0.3}. Rows that load a user encoder (its dropout is part of the artefact): softmax x
    pretrained rate {1e-4, 3e-4, 1e-3, 3e-3}, fresh rate 1e-3 (objective heads only).
    """
    softmaxes = ("in_batch", "full")
    if row in FRESH_USER_ROWS:
        rates = ((1e-3, 1e-4), (3e-3, 3e-4))
        return [
            RowConfig(softmax, fresh, pretrained, dropout)
            for softmax, (fresh, pretrained), dropout in itertools.product(softmaxes, rates, (0.1, 0.3))
        ]
    return [
        RowConfig(softmax, 1e-3, pretrained, 0.1)
        for softmax, pretrained in itertools.product(softmaxes, (1e-4, 3e-4, 1e-3, 3e-3))
    ]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one setting and the configuration each trained row uses there."""

    label: str
    dim: int
    batch_size: int
    max_length: int
    pretrain_epochs: int  # cap; pre-training stops early after `patience` epochs without a better source NDCG@10
    finetune_epochs: int  # cap; likewise on the target's validation split
    patience: int
    text_trainable_layers: int
    new_items: float = 0.2
    seed: int = 42
    configs: dict[str, RowConfig] = field(default_factory=dict)

    def config_of(self, row: str) -> RowConfig:
        """The selected configuration of a row (the default RowConfig where none was selected)."""
        return self.configs.get(row, RowConfig())

    def with_seed(self, seed: int) -> DemoSettings:
        return replace(self, seed=seed)

    def common(self) -> dict[str, Any]:
        """Overrides shared by every run of this setting."""
        return {"batch_size": self.batch_size, "max_length": self.max_length, "seed": self.seed}


# Configurations selected per setting by benchmarks/quality.py on the validation split (docs/benchmarks.md).
# (The GPU run of docs/benchmarks.md, search seed 0; the eight candidates of each row and their scores are there.)
_FULL_HIGH = RowConfig("full", 3e-3, 3e-4, 0.1)
QUICK_CONFIGS: dict[str, RowConfig] = {
    "sasrec-id": _FULL_HIGH,
    "pmmrec-scratch": _FULL_HIGH,
    "pmmrec-transfer": RowConfig("full", 1e-3, 3e-3, 0.1),
    "transfer-text-only": _FULL_HIGH,
    "transfer-user-only": RowConfig("full", 1e-3, 3e-3, 0.1),
    "transfer-no-nid": RowConfig("full", 1e-3, 3e-3, 0.1),
    "transfer-no-rcl": RowConfig("full", 1e-3, 3e-3, 0.1),
    "mm-transfer": RowConfig("in_batch", 1e-3, 1e-3, 0.1),
    "mm-transfer-no-nicl": RowConfig("in_batch", 1e-3, 1e-3, 0.1),
}
DEMO_CONFIGS: dict[str, RowConfig] = {
    "sasrec-id": RowConfig("full", 3e-3, 3e-4, 0.3),
    "pmmrec-scratch": _FULL_HIGH,
    "pmmrec-transfer": RowConfig("full", 1e-3, 1e-3, 0.1),
}
LARGE_CONFIGS: dict[str, RowConfig] = {
    "sasrec-id": RowConfig("full", 1e-3, 1e-4, 0.3),
    "pmmrec-scratch": RowConfig("full", 1e-3, 1e-4, 0.3),
    "pmmrec-transfer": RowConfig("full", 1e-3, 1e-4, 0.1),
}

SETTINGS = {
    # --quick: a few minutes on 2 CPU cores; only the text encoder's projection is trained (its 6 layers frozen).
    "quick": DemoSettings(
        "quick", dim=64, batch_size=128, max_length=20, pretrain_epochs=1, finetune_epochs=3, patience=1,
        text_trainable_layers=0, configs=QUICK_CONFIGS,
    ),
    # `pmmrec demo`: at most 15 minutes on 2 CPU cores.
    "demo": DemoSettings(
        "default", dim=128, batch_size=64, max_length=20, pretrain_epochs=3, finetune_epochs=6, patience=2,
        text_trainable_layers=1, configs=DEMO_CONFIGS,
    ),
    # The larger setting of docs/benchmarks.md (a GPU run).
    "large": DemoSettings(
        "large", dim=256, batch_size=64, max_length=20, pretrain_epochs=20, finetune_epochs=50, patience=5,
        text_trainable_layers=2, configs=LARGE_CONFIGS,
    ),
}  # fmt: skip


def settings_for(name: str, seed: int = 42) -> DemoSettings:
    """A named setting (quick, demo, large) with a seed."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; use one of {', '.join(SETTINGS)}")
    return SETTINGS[name].with_seed(seed)


def row_model(row: str, settings: DemoSettings, components: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The model section of a row's training config. components: per pre-training name, slot -> reference."""
    config = settings.config_of(row)
    layers = settings.text_trainable_layers
    fresh = {"dim": settings.dim, "dropout": config.dropout}
    if row == "sasrec-id":
        return {"item_tower": "id", **fresh}
    if row == "pmmrec-scratch":
        return {"modalities": ["text"], "text_trainable_layers": layers, **fresh}
    if row == "mm-scratch":
        return {"modalities": list(PAPER_MODALITIES), "text_trainable_layers": layers, **fresh}
    parts = components[PRETRAINING_OF[row]]
    if row == "transfer-text-only":
        return {"text": parts["text"], "text_trainable_layers": layers, "dropout": config.dropout}
    if row == "transfer-user-only":
        return {"user": parts["user"], "modalities": ["text"], "text_trainable_layers": layers}
    return {**{slot: parts[slot] for slot in REFERENCE_SLOTS if slot in parts}, "text_trainable_layers": layers}


def row_overrides(row: str, settings: DemoSettings, components: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The whole fine-tuning config of a row at its selected configuration (nested overrides). The full recipe: the
    settings name the demo's own sizes (chosen for its CPU run), and the CPU recipe would fill what they leave out."""
    return {
        **settings.common(),
        "recipe": "full",
        "epochs": None,
        "max_epochs": settings.finetune_epochs,
        "patience": settings.patience,
        **settings.config_of(row).overrides(),
        "model": row_model(row, settings, components),
    }


def pretrain_overrides(name: str, settings: DemoSettings) -> dict[str, Any]:
    """Pre-training config of one pre-training run: text (rec + NID + RCL), its NID/RCL ablations, or text + vision
    (mm: + NICL) and its NICL ablation."""
    modalities = list(PAPER_MODALITIES) if name.startswith("mm") else ["text"]
    weights = {"text-no-nid": {"nid": 0.0}, "text-no-rcl": {"rcl": 0.0}, "mm-no-nicl": {"nicl": 0.0}}.get(name, {})
    return {
        **settings.common(),
        "epochs": None,
        "max_epochs": settings.pretrain_epochs,
        "patience": settings.patience,
        "evaluate_test": False,
        "objectives": {"weights": weights},
        "model": {
            "modalities": modalities,
            "dim": settings.dim,
            "text_trainable_layers": settings.text_trainable_layers,
        },
    }
