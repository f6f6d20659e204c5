"""The options a fresh component is created from: one typed model, shared by `pmmrec init`, assembly and training.

Each component type reads the fields it needs in its `create` class method (`components.base.Component.create`);
the field descriptions are the help texts of `pmmrec init`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pmmrec.components import _backbones

# The one rule for the embedding width d: d is the width of the text encoder's backbone (the paper: 768 with
# XLM-R); components without a text backbone of their own (vision encoder, fusion, user encoder, ID tower) take the
# default text backbone's width, 384 (the packaged all-MiniLM-L6-v2), unless given. Training and assembly take d from
# the components they start from.
DEFAULT_DIM = 384


class CreateOptions(BaseModel):
    """How to create a fresh component; fields a type does not use are ignored by it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int | None = Field(
        default=None,
        ge=1,
        le=_backbones.MAX_HIDDEN,
        description=f"Embedding width d (default: a text encoder's backbone width, else {DEFAULT_DIM}, the packaged "
        "MiniLM's width).",
    )
    backbone: str | None = Field(
        default=None,
        description="Encoders: built-in name (minilm, efficientnet-lite0), a local folder or hub:ORG/NAME[@REV] "
        "(default: minilm for a text encoder, efficientnet-lite0 for a vision encoder).",
    )
    trainable_layers: int = Field(
        default=2,
        ge=0,
        le=_backbones.MAX_LAYERS,
        description="Encoders: top backbone layers (blocks) trained; the rest is frozen (paper: 2).",
    )
    max_tokens: int = Field(default=50, ge=1, le=4096, description="Text encoder: tokens kept per item text.")
    word_embeddings: bool = Field(
        default=False,
        description="Text encoder: a trained embedding per word piece added to each projected token (zero at first).",
    )
    heads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Fusion and user encoder: attention heads (default: the largest divisor of d up to 12 for the "
        "fusion, up to 2 for the user encoder).",
    )
    layers: int = Field(default=2, ge=1, le=48, description="User encoder: Transformer blocks.")
    max_length: int = Field(default=20, ge=1, le=4096, description="User encoder: longest input sequence.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Fusion and user encoder: dropout.")
    modalities: tuple[str, ...] | None = Field(
        default=None, description="Merge-attention fusion: the modalities it merges (default: text and images)."
    )
    item_ids: tuple[str, ...] | None = Field(
        default=None, description="ID item tower: the catalogue's item ids, in embedding-row order."
    )

    @property
    def width(self) -> int:
        """d for a component without a text backbone of its own: `dim`, else DEFAULT_DIM."""
        return self.dim if self.dim is not None else DEFAULT_DIM


def default_heads(dim: int, at_most: int) -> int:
    """The largest number of attention heads up to `at_most` that divides `dim` (one rule for fusion and user)."""
    return max(heads for heads in range(1, min(dim, at_most) + 1) if dim % heads == 0)
