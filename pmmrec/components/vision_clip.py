"""`vision_encoder/clip`: a Hugging Face CLIP vision tower (the paper's ViT-B/32) plus a projection to d."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from pmmrec import budget
from pmmrec.components import _backbones
from pmmrec.components._vision import (
    CLIP_MEAN,
    CLIP_STD,
    VisionPreprocessingFields,
    normalise_pixels,
    write_preprocessing,
)
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import EncoderConfig, VisionEncoder
from pmmrec.components.options import CreateOptions


class CLIPVisionEncoderConfig(EncoderConfig, VisionPreprocessingFields):
    """Architecture of a CLIP vision encoder."""

    backbone: str = Field(min_length=1, description="Where the backbone came from (hub id or path).")
    backbone_config: dict[str, Any] = Field(description="The CLIPVisionConfig fields (architecture only).")
    train_embeddings: bool = Field(default=False, description="Also train the patch embedding (paper: frozen).")

    @field_validator("backbone_config")
    @classmethod
    def _check_backbone(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _backbones.check_backbone_config(value, allowed_types={"clip_vision_model"})

    def parameter_estimate(self) -> int:
        b = self.backbone_config
        hidden, inner, patch = b["hidden_size"], b["intermediate_size"], b["patch_size"]
        tokens = (b["image_size"] // patch) ** 2 + 1
        layer = 4 * hidden * hidden + 2 * hidden * inner + inner + 9 * hidden
        return 3 * patch * patch * hidden + tokens * hidden + b["num_hidden_layers"] * layer + (hidden + 1) * self.dim

    def activation_estimate(self) -> int:
        b = self.backbone_config
        tokens = (b["image_size"] // b["patch_size"]) ** 2 + 1
        per_image = tokens * (b["intermediate_size"] + 6 * b["hidden_size"]) + 2 * b["num_attention_heads"] * tokens**2
        return NOMINAL_BATCH * (per_image + 3 * b["image_size"] ** 2)

    @model_validator(mode="after")
    def _same_image_size(self) -> CLIPVisionEncoderConfig:
        side = self.backbone_config["image_size"]
        if side != self.image_size:
            raise ValueError(f"image_size ({self.image_size}) must equal backbone_config.image_size ({side})")
        return self


@register_component
class CLIPVisionEncoder(_backbones.LayerStackFreezing, VisionEncoder):
    """CLS + patch token states of a CLIP ViT (before its final LayerNorm), projected to d."""

    type_name: ClassVar[str] = "vision_encoder/clip"
    config_class: ClassVar[type[ComponentConfig]] = CLIPVisionEncoderConfig
    config: CLIPVisionEncoderConfig

    def __init__(self, config: CLIPVisionEncoderConfig, backbone: nn.Module | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else _backbones.build_hf_backbone(config.backbone_config)
        self.projection = nn.Linear(int(config.backbone_config["hidden_size"]), config.dim)
        self.apply_freezing()

    @classmethod
    def create(cls, options: CreateOptions) -> CLIPVisionEncoder:
        """A fresh encoder on pretrained CLIP vision weights (`options.backbone`: a hub id or reference, a folder)."""
        if options.backbone is None:
            raise ValueError("vision_encoder/clip needs --backbone (e.g. openai/clip-vit-base-patch32 or a folder)")
        return cls.from_backbone(options.backbone, dim=options.width, trainable_layers=options.trainable_layers)

    @classmethod
    def from_backbone(
        cls, backbone: str, dim: int | None = None, trainable_layers: int = 2, train_embeddings: bool = False
    ) -> CLIPVisionEncoder:
        """A fresh encoder on pretrained CLIP vision weights (hub id such as openai/clip-vit-base-patch32, or path)."""
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from pmmrec.references import hub_is_offline

        location, label = _backbones.resolve_backbone_location(backbone)
        # The backbone's config is checked (and its memory budgeted) before a single weight is read.
        found = CLIPVisionConfig.from_pretrained(location, local_files_only=hub_is_offline())
        backbone_config = _backbones.sanitise_backbone_config(found.to_dict())
        config = CLIPVisionEncoderConfig(
            dim=dim or int(backbone_config["hidden_size"]),
            backbone=label,
            backbone_config=backbone_config,
            trainable_layers=trainable_layers,
            train_embeddings=train_embeddings,
            image_size=int(backbone_config["image_size"]),
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
        budget.require(config.memory_estimate(), f"backbone {backbone!r} ({config.summary()})")
        with _backbones.quiet_weight_loading():
            model = CLIPVisionModel.from_pretrained(location, local_files_only=hub_is_offline())
        return cls(config, backbone=model)

    def save_extra_files(self, folder: Path) -> None:
        write_preprocessing(folder, self.config)

    def base_model(self) -> str | None:
        return _backbones.base_model_of(self.config.backbone)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def card_summary(self) -> str:
        return (
            f"CLIP vision encoder ({self.num_layers} blocks, from `{self.config.backbone}`), top "
            f"{min(self.config.trainable_layers, self.num_layers)} blocks trainable; its token states (CLS + patches) "
            f"are projected to d = {self.config.dim}. Input preprocessing is in `preprocessing.json`."
        )

    def apply_freezing(self) -> None:
        """Freeze the patch embedding, the pre-LayerNorm and the bottom blocks; the unused final LayerNorm too."""
        _backbones.set_trainable(self.backbone, True)
        _backbones.set_trainable(self.backbone.embeddings, self.config.train_embeddings)
        _backbones.set_trainable(self.backbone.pre_layrnorm, self.config.train_embeddings)
        _backbones.set_trainable(self.backbone.post_layernorm, False)
        self.freeze_layer_stack()
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        if self.config.train_embeddings:
            return []
        return [self.backbone.embeddings, self.backbone.pre_layrnorm, *list(self.layers)[: self.frozen_depth]]

    def frozen_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the frozen bottom for uint8 images: cacheable per item."""
        dtype = self.projection.weight.dtype
        pixels = normalise_pixels(pixel_values, self.config.image_mean, self.config.image_std, dtype)
        hidden = self.backbone.pre_layrnorm(self.backbone.embeddings(pixels))
        return self._run_layers(hidden, 0, self.frozen_depth)

    def _run_layers(self, hidden: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        for layer in list(self.layers)[start:stop]:
            output = layer(hidden, None)
            hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def forward_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """Trainable top blocks + projection on a (possibly cached) frozen-prefix output."""
        return self.projection(self._run_layers(prefix, self.frozen_depth))

