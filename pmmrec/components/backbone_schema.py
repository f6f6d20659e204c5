"""What a Hugging Face backbone config (`config.backbone_config` of a text or CLIP vision encoder) may hold.

The backbone is rebuilt from this dict alone, so every key is checked before anything is built: its type, its
range, and the rules across keys that the model code assumes without checking (the heads divide the width, the
pad token is inside the vocabulary, the patch size divides the image). Keys that change what the model computes
and that pmmrec never uses (a decoder, cross-attention, pruned heads, remote code) must keep their neutral value;
any key not listed here is refused, naming it. One place for this file type: the encoders' configs call
`check_backbone_config`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Upper bounds that refuse absurd configs before any tensor is allocated (the memory budget checks their product).
MAX_HIDDEN = 8192
MAX_LAYERS = 96
MAX_VOCAB = 1_000_000
MAX_POSITIONS = 65_536
MAX_IMAGE_SIZE = 2048

# Text backbones whose layers pmmrec runs itself (embeddings + encoder.layer, BERT-like).
TEXT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
# Position ids of these types start after the pad id (RoBERTa's rule): max_tokens + pad + 1 positions are needed.
POSITIONS_AFTER_PAD = frozenset({"roberta", "xlm-roberta", "camembert"})
ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_fast", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate", "quick_gelu", "relu",
    "silu", "swish", "tanh", "mish",
)  # fmt: skip

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
TokenId = Annotated[int, Field(ge=0, lt=MAX_VOCAB)]


class _Generic(BaseModel):
    """The keys every Hugging Face config writes; those that change the architecture must stay neutral."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model_type: str
    output_hidden_states: bool = False
    output_attentions: Literal[False] = False
    return_dict: bool = True
    torchscript: Literal[False] = False
    chunk_size_feed_forward: Literal[0] = 0
    is_encoder_decoder: Literal[False] = False
    id2label: dict[str, Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=1000)
    label2id: dict[str, int] | None = Field(default=None, max_length=1000)
    num_labels: int | None = Field(default=None, ge=0, le=1000)
    problem_type: Literal["regression", "single_label_classification", "multi_label_classification"] | None = None
    pruned_heads: dict[str, list[int]] | None = Field(default=None, max_length=0)
    tie_word_embeddings: bool = True
    gradient_checkpointing: bool = False
    output_past: bool = True
    finetuning_task: str | None = Field(default=None, max_length=200)
    tokenizer_class: str | None = Field(default=None, max_length=200)
    initializer_range: float = Field(default=0.02, ge=0.0, le=10.0)
    layer_norm_eps: float = Field(default=1e-12, gt=0.0, le=1.0)
    hidden_act: Literal[ACTIVATIONS] = "gelu"  # type: ignore[valid-type]
    hidden_size: int = Field(ge=1, le=MAX_HIDDEN)
    num_hidden_layers: int = Field(ge=1, le=MAX_LAYERS)
    num_attention_heads: int = Field(ge=1, le=256)
    intermediate_size: int = Field(ge=1, le=8 * MAX_HIDDEN)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> _Generic:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        return self


class TextBackbone(_Generic):
    """A BERT-like text backbone (bert, roberta, xlm-roberta, camembert)."""

    model_type: Literal[TEXT_MODEL_TYPES]  # type: ignore[valid-type]
    vocab_size: int = Field(ge=1, le=MAX_VOCAB)
    max_position_embeddings: int = Field(ge=1, le=MAX_POSITIONS)
    type_vocab_size: int = Field(default=2, ge=1, le=1024)
    hidden_dropout_prob: Probability = 0.1
    attention_probs_dropout_prob: Probability = 0.1
    classifier_dropout: Probability | None = None
    position_embedding_type: Literal["absolute"] = "absolute"
    pad_token_id: TokenId | None = 0
    bos_token_id: TokenId | None = None
    eos_token_id: TokenId | None = None
    sep_token_id: TokenId | None = None
    is_decoder: Literal[False] = False
    add_cross_attention: Literal[False] = False
    use_cache: bool = True

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> TextBackbone:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id"):
            value = getattr(self, name)
            if value is not None and value >= self.vocab_size:
                raise ValueError(f"{name} ({value}) is outside the vocabulary (vocab_size {self.vocab_size})")
        return self

    def positions_needed(self, max_tokens: int) -> int:
        """Position embeddings a text of `max_tokens` tokens reads (RoBERTa's ids start after the pad id)."""
        if self.model_type in POSITIONS_AFTER_PAD:
            return max_tokens + (self.pad_token_id or 0) + 1
        return max_tokens


class ClipVisionBackbone(_Generic):
    """A CLIP vision tower."""

    model_type: Literal["clip_vision_model"]
    hidden_act: Literal[ACTIVATIONS] = "quick_gelu"  # type: ignore[valid-type]
    layer_norm_eps: float = Field(default=1e-5, gt=0.0, le=1.0)
    image_size: int = Field(ge=1, le=MAX_IMAGE_SIZE)
    patch_size: int = Field(ge=1, le=MAX_IMAGE_SIZE)
    num_channels: Literal[3] = 3
    attention_dropout: Probability = 0.0
    dropout: Probability = 0.0
    projection_dim: int = Field(default=512, ge=1, le=MAX_HIDDEN)
    initializer_factor: float = Field(default=1.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> ClipVisionBackbone:
        if self.patch_size > self.image_size or self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        return self


SCHEMAS: dict[str, type[_Generic]] = {
    **{name: TextBackbone for name in TEXT_MODEL_TYPES},
    "clip_vision_model": ClipVisionBackbone,
}


def parse_backbone(config: dict[str, Any]) -> _Generic:
    """The typed view of a backbone config (already checked by `check_backbone_config`)."""
    return SCHEMAS[config["model_type"]].model_validate(json.loads(json.dumps(config)))


def check_backbone_config(config: dict[str, Any], allowed_types: set[str] | None = None) -> dict[str, Any]:
    """Validate a backbone config dict: a supported model_type, every key typed and in range, the cross-key rules.

    Returns the dict as config.json will hold it (a JSON round trip: `id2label`'s integer keys become strings), so
    a component's config equals the config of the same component reloaded. Raises ValueError naming the key.
    """
    try:
        config = json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"backbone_config must be JSON-serialisable ({exc})") from None
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ValueError("backbone_config.model_type must be a non-empty string")
    if "auto_map" in config:
        raise ValueError("backbone_config.auto_map is refused: pmmrec never runs remote code")
    allowed = set(SCHEMAS) if allowed_types is None else allowed_types & set(SCHEMAS)
    if model_type not in allowed:
        raise ValueError(f"backbone_config.model_type {model_type!r} is not one of {sorted(allowed)}")
    try:
        SCHEMAS[model_type].model_validate(config)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"backbone_config.{where}: {message}" if where else f"backbone_config: {message}")
        raise ValueError("; ".join(problems)) from None
    return config
