"""`text_encoder/hf`: any Hugging Face text backbone (BERT, XLM-R, ...) plus a projection to d."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from torch import nn

from pmmrec import budget
from pmmrec.components import _backbones, _packed, backbone_schema
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.inputs import TextPreprocessor
from pmmrec.components.kinds import EncoderConfig, ModalityInputs, ModalityTokens, TextEncoder
from pmmrec.components.options import CreateOptions
from pmmrec.components.tokenizer_files import check_loaded_tokenizer, load_tokenizer
from pmmrec.errors import ConfigError

TOKENIZER_FOLDER = "tokenizer"
DEFAULT_BACKBONE = "minilm"


class HFTextEncoderConfig(EncoderConfig):
    """Architecture of a text encoder built on a Hugging Face backbone."""

    backbone: str = Field(min_length=1, description="Where the backbone came from (built-in name, hub id or path).")
    backbone_config: dict[str, Any] = Field(description="The backbone's Hugging Face config (architecture only).")
    max_tokens: int = Field(default=50, ge=1, le=4096, description="Tokens kept per item text.")
    train_embeddings: bool = Field(default=False, description="Also train the token embeddings (paper: frozen).")
    word_embeddings: bool = Field(
        default=False,
        description="A trained d-wide embedding per word piece, zero at first, added to each projected token state: "
        "an item also gets the mean of its words' embeddings, which tells items apart by their words without "
        "running a backbone layer (vocabulary x d more weights; not in the paper).",
    )

    @model_serializer(mode="wrap")
    def _written_when_on(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """config.json names `word_embeddings` only when on: an encoder without them writes what older pmmrec reads."""
        data = handler(self)
        if not self.word_embeddings:
            data.pop("word_embeddings", None)
        return data

    @field_validator("backbone_config")
    @classmethod
    def _check_backbone(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _backbones.check_backbone_config(value, allowed_types=set(backbone_schema.TEXT_MODEL_TYPES))

    def parameter_estimate(self) -> int:
        b = self.backbone_config
        hidden, inner = b["hidden_size"], b["intermediate_size"]
        tables = b["vocab_size"] + b["max_position_embeddings"] + b.get("type_vocab_size", 2)
        layer = 4 * hidden * hidden + 2 * hidden * inner + inner + 9 * hidden
        words = b["vocab_size"] * self.dim if self.word_embeddings else 0
        return tables * hidden + b["num_hidden_layers"] * layer + (hidden + 1) * self.dim + words

    def activation_estimate(self) -> int:
        b, tokens = self.backbone_config, self.max_tokens
        per_item = tokens * (b["intermediate_size"] + 6 * b["hidden_size"]) + 2 * b["num_attention_heads"] * tokens**2
        return NOMINAL_BATCH * per_item

    @model_validator(mode="after")
    def _positions_cover_max_tokens(self) -> HFTextEncoderConfig:
        backbone = backbone_schema.parse_backbone(self.backbone_config)
        assert isinstance(backbone, backbone_schema.TextBackbone)
        needed = backbone.positions_needed(self.max_tokens)
        if needed > backbone.max_position_embeddings:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) needs {needed} position embeddings but the backbone has "
                f"max_position_embeddings {backbone.max_position_embeddings}"
            )
        return self


@register_component
class HFTextEncoder(_backbones.LayerStackFreezing, TextEncoder):
    """Token states of the item text, projected to d; the bottom layers are frozen (a fixed function)."""

    type_name: ClassVar[str] = "text_encoder/hf"
    config_class: ClassVar[type[ComponentConfig]] = HFTextEncoderConfig
    config: HFTextEncoderConfig
    # How layers run over item texts (not saved: a run-time choice, measured in docs/benchmarks.md). `packed`
    # computes real tokens only (BERT-family layers; others fall back to `bucketed`); `padded` is for measurement.
    token_layout: _packed.TokenLayout = "packed"
    attention_core: _packed.AttentionCore = "auto"

    def __init__(self, config: HFTextEncoderConfig, backbone: nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else _backbones.build_hf_backbone(config.backbone_config)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # unused: token states are what the fusion needs
        hidden = int(config.backbone_config["hidden_size"])
        self.projection = nn.Linear(hidden, config.dim)
        self.word_embeddings = None
        if config.word_embeddings:
            self.word_embeddings = _zero_table(int(config.backbone_config["vocab_size"]), config.dim)
        self.tokenizer = tokenizer
        self.apply_freezing()

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, options: CreateOptions) -> HFTextEncoder:
        """A fresh encoder on a pretrained backbone (`options.backbone`, default the packaged MiniLM)."""
        return cls.from_backbone(
            options.backbone or DEFAULT_BACKBONE,
            dim=options.dim,
            max_tokens=options.max_tokens,
            trainable_layers=options.trainable_layers,
            word_embeddings=options.word_embeddings,
        )

    @classmethod
    def from_backbone(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        dim: int | None = None,
        max_tokens: int = 50,
        trainable_layers: int = 2,
        train_embeddings: bool = False,
        word_embeddings: bool = False,
    ) -> HFTextEncoder:
        """A fresh encoder on pretrained backbone weights (built-in name, local folder or hub reference/id)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from pmmrec.references import hub_is_offline

        location, label = _backbones.resolve_backbone_location(backbone)
        offline = hub_is_offline()
        # The backbone's config is checked (and its memory budgeted) before a single weight is read.
        found = AutoConfig.from_pretrained(location, local_files_only=offline, trust_remote_code=False)
        backbone_config = _backbones.sanitise_backbone_config(found.to_dict())
        config = HFTextEncoderConfig(
            dim=dim or int(backbone_config["hidden_size"]),
            backbone=label,
            backbone_config=backbone_config,
            max_tokens=max_tokens,
            trainable_layers=trainable_layers,
            train_embeddings=train_embeddings,
            word_embeddings=word_embeddings,
        )
        budget.require(config.memory_estimate(), f"backbone {backbone!r} ({config.summary()})")
        with _backbones.quiet_weight_loading():
            model = AutoModel.from_pretrained(location, local_files_only=offline, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=offline, trust_remote_code=False)
        parsed = backbone_schema.parse_backbone(config.backbone_config)
        assert isinstance(parsed, backbone_schema.TextBackbone)
        check_loaded_tokenizer(tokenizer, parsed, max_tokens, f"backbone {backbone!r}: its tokenizer")
        return cls(config, backbone=model, tokenizer=tokenizer)

    @classmethod
    def build_for_loading(cls, config: ComponentConfig, folder: Path) -> HFTextEncoder:
        assert isinstance(config, HFTextEncoderConfig)
        tokenizer_path = folder / TOKENIZER_FOLDER
        tokenizer = None
        if os.path.lexists(tokenizer_path):
            backbone = backbone_schema.parse_backbone(config.backbone_config)
            assert isinstance(backbone, backbone_schema.TextBackbone)
            tokenizer = load_tokenizer(tokenizer_path, backbone, config.max_tokens)
        return cls(config, tokenizer=tokenizer)

    def save_extra_files(self, folder: Path) -> None:
        if self.tokenizer is not None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None:
                # A call leaves its truncation and padding in the backend, and tokenizer.json records them: saved
                # without, the same tokenizer gives the same bytes whether or not it was used (pinned checksums).
                backend.no_truncation()
                backend.no_padding()
            self.tokenizer.save_pretrained(str(folder / TOKENIZER_FOLDER))

    def base_model(self) -> str | None:
        return _backbones.base_model_of(self.config.backbone)

    def card_summary(self) -> str:
        layers = self.num_layers
        words = " A trained embedding per word piece is added to each projected token." if self.word_embeddings else ""
        return (
            f"Text encoder on a `{self.config.backbone_config['model_type']}` backbone ({layers} layers, "
            f"from `{self.config.backbone}`), top {min(self.config.trainable_layers, layers)} layers trainable, "
            f"projected to d = {self.config.dim}; up to {self.config.max_tokens} tokens per item text.{words} "
            f"The tokenizer is in `{TOKENIZER_FOLDER}/`."
        )

    # ---- freezing -----------------------------------------------------------------------------

    def apply_freezing(self) -> None:
        """Freeze the embeddings and the bottom layers as the config says."""
        _backbones.set_trainable(self.backbone, True)
        _backbones.set_trainable(self.backbone.embeddings, self.config.train_embeddings)
        self.freeze_layer_stack()
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        if self.config.train_embeddings:
            return []
        return [self.backbone.embeddings, *list(self.layers)[: self.frozen_depth]]

    # ---- forward ------------------------------------------------------------------------------

    def _additive_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mask = attention_mask.to(torch.bool)[:, None, None, :]
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (layer 0 input)."""
        return self.backbone.embeddings(input_ids=input_ids.long())

    def layout_for(self, layers: list[nn.Module]) -> str:
        """The token layout these layers run in: `token_layout`, or `bucketed` where packing is unsupported."""
        if self.token_layout == "packed" and not all(_packed.is_bert_like(layer) for layer in layers):
            return "bucketed"
        return self.token_layout

    def _padded_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: list[nn.Module]
    ) -> torch.Tensor:
        additive = self._additive_mask(attention_mask, hidden.dtype)
        for layer in layers:
            output = layer(hidden, attention_mask=additive)
            hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def _run(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: list[nn.Module], head: nn.Module | None
    ) -> torch.Tensor:
        """`layers` then `head` (if any) over [N, T, hidden], in this encoder's token layout."""
        layout = self.layout_for(layers)
        if layout == "packed":
            packing = _packed.Packing.from_mask(attention_mask)
            packed = packing.pack(hidden)
            for layer in layers:
                packed = _packed.packed_bert_layer(layer, packed, packing, self.attention_core)
            return packing.unpack(head(packed) if head is not None else packed)
        if layout == "bucketed" and layers:
            hidden = _packed.run_bucketed(lambda h, m: self._padded_layers(h, m, layers), hidden, attention_mask)
        else:
            hidden = self._padded_layers(hidden, attention_mask, layers)
        return head(hidden) if head is not None else hidden

    def run_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int | None = None
    ) -> torch.Tensor:
        """Apply backbone layers [start, stop) to hidden states; only real tokens are computed (`token_layout`)."""
        return self._run(hidden, attention_mask, list(self.layers)[start:stop], None)

    def frozen_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the frozen bottom (embeddings + frozen layers): cacheable per item."""
        return self.run_layers(self.embed(input_ids), attention_mask, 0, self.frozen_depth)

    def forward_from_prefix(
        self, prefix: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the trainable top layers and the projection on a (possibly cached) frozen-prefix output."""
        layers = list(self.layers)[self.frozen_depth :]
        return self._run(prefix, attention_mask, layers, self.projection), attention_mask.to(torch.bool)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = super().forward(input_ids, attention_mask)
        return self.add_word_embeddings(states, input_ids), mask

    def tokens(self, inputs: ModalityInputs | None, prefix: torch.Tensor | None = None) -> ModalityTokens:
        tokens = super().tokens(inputs, prefix)
        if prefix is None or self.word_embeddings is None:
            return tokens  # `forward` added them
        input_ids = (inputs or {}).get("input_ids")
        if input_ids is None:
            raise ValueError("this text encoder's word embeddings need text_ids beside a cached prefix")
        return ModalityTokens(self.add_word_embeddings(tokens.tokens, input_ids), tokens.mask)

    def fresh_parameter_prefixes(self) -> tuple[str, ...]:
        return ("word_embeddings.",) if self.word_embeddings is not None else ()

    def add_word_embeddings_table(self) -> None:
        if self.word_embeddings is not None:
            return
        self.config = HFTextEncoderConfig.model_validate({**self.config.model_dump(), "word_embeddings": True})
        table = _zero_table(int(self.config.backbone_config["vocab_size"]), self.config.dim)
        self.word_embeddings = table.to(self.projection.weight.device)

    def add_word_embeddings(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Projected token states [N, T, d] plus each token's word-piece embedding (unchanged without them)."""
        if self.word_embeddings is None:
            return states
        return states + self.word_embeddings(input_ids[:, : states.shape[1]].long()).to(states.dtype)

    # ---- inputs --------------------------------------------------------------------------------

    @property
    def preprocessor(self) -> TextPreprocessor:
        if self.tokenizer is None:
            raise ConfigError("this text encoder has no tokenizer (its folder lacks tokenizer/)")
        return TextPreprocessor(self.tokenizer, self.config.max_tokens)


def _zero_table(vocabulary: int, dim: int) -> nn.Embedding:
    """Word-piece embeddings that start at zero: the encoder's function is unchanged until they train."""
    table = nn.Embedding(vocabulary, dim)
    nn.init.zeros_(table.weight)
    return table
