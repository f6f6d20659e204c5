"""`user_encoder/sasrec`: the SASRec-style causal Transformer over a user's item embeddings."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components._dropout import use_uniform_dropout
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import UserEncoder
from pmmrec.components.options import CreateOptions, default_heads


class SASRecConfig(ComponentConfig):
    """Architecture of the user encoder (paper: max length 20, 2 post-LN blocks, 2 heads, FFN 4d ReLU)."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding / user state width d.")
    max_length: int = Field(default=20, ge=1, le=4096, description="Longest input sequence (learned positions).")
    layers: int = Field(default=2, ge=1, le=48, description="Transformer blocks.")
    heads: int = Field(default=2, ge=1, le=256, description="Attention heads; must divide dim.")
    ffn_multiplier: int = Field(default=4, ge=1, le=16, description="Feed-forward width as a multiple of d.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the input and inside blocks.")

    def parameter_estimate(self) -> int:
        d, m = self.dim, self.ffn_multiplier
        return self.max_length * d + 2 * d + self.layers * ((4 + 2 * m) * d * d + (m + 9) * d)

    def activation_estimate(self) -> int:
        n, d = self.max_length, self.dim
        return NOMINAL_BATCH * (2 * self.heads * n * n + n * self.ffn_multiplier * d + 6 * n * d)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


@register_component
class SASRecUserEncoder(UserEncoder):
    """Learned positions + LayerNorm + dropout, then causal post-LN blocks; sequences are left-padded."""

    type_name: ClassVar[str] = "user_encoder/sasrec"
    config_class: ClassVar[type[ComponentConfig]] = SASRecConfig
    config: SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__(config)
        self.positions = nn.Embedding(config.max_length, config.dim)
        self.input_norm = nn.LayerNorm(config.dim)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=config.dim,
                nhead=config.heads,
                dim_feedforward=config.ffn_multiplier * config.dim,
                dropout=config.dropout,
                activation="relu",
                batch_first=True,
                norm_first=False,
            )
            for _ in range(config.layers)
        )
        nn.init.normal_(self.positions.weight, std=0.02)
        use_uniform_dropout(self)  # less than half nn.Dropout's CPU time (components/_dropout.py)

    @classmethod
    def create(cls, options: CreateOptions) -> SASRecUserEncoder:
        """A fresh user encoder at width d; heads default to the largest divisor of d up to 2 (paper: 2)."""
        dim = options.width
        return cls(
            SASRecConfig(
                dim=dim,
                heads=options.heads or default_heads(dim, 2),
                layers=options.layers,
                max_length=options.max_length,
                dropout=options.dropout,
            )
        )

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def card_summary(self) -> str:
        c = self.config
        return (
            f"SASRec-style user encoder: {c.layers} causal post-LN Transformer blocks, {c.heads} heads, d = {c.dim}, "
            f"learned positions for up to {c.max_length} items. It reads item embeddings, so it works with any item "
            "tower of the same width."
        )

    def attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean [B * heads, S, S], True = blocked: causal, no padding keys; a position always sees itself."""
        length = mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        allowed = causal.unsqueeze(0) & mask.to(torch.bool).unsqueeze(1)
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=mask.device).unsqueeze(0)
        return (~allowed).repeat_interleave(self.config.heads, dim=0)

    def forward(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User state at every position [B, S, d]; the last column is the state after the whole sequence."""
        length = item_embeddings.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length {self.config.max_length}")
        # Left padding: the most recent item always gets the last position embedding.
        position_ids = torch.arange(
            self.config.max_length - length, self.config.max_length, device=item_embeddings.device
        )
        hidden = item_embeddings + self.positions(position_ids).unsqueeze(0)
        hidden = self.input_dropout(self.input_norm(hidden))
        blocked = self.attention_mask(mask)
        for block in self.blocks:
            hidden = block(hidden, src_mask=blocked)
        return hidden

    def final_states(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The state after each whole sequence [B, d], as `forward(...)[:, -1]` computes it, with less work in eval
        mode: the last block reads every position's keys and values but computes its query, attention output and
        feed-forward for the last position only (40% of the blocks' multiply-adds at 2 blocks of 20 positions).
        Equal to `forward`'s last column up to float32 rounding (tests/test_ranking.py)."""
        last = self.blocks[-1]
        if self.training or not _prunable(last):
            return self.forward(item_embeddings, mask)[:, -1]
        length = item_embeddings.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length {self.config.max_length}")
        position_ids = torch.arange(
            self.config.max_length - length, self.config.max_length, device=item_embeddings.device
        )
        hidden = self.input_norm(item_embeddings + self.positions(position_ids).unsqueeze(0))
        blocked = self.attention_mask(mask)
        for block in self.blocks[:-1]:
            hidden = block(hidden, src_mask=blocked)
        heads = self.config.heads
        last_row = blocked.view(-1, heads, length, length)[:, :, -1:, :]  # [B, heads, 1, S], True = blocked
        return _last_position(last, hidden, last_row)


def _prunable(block: nn.Module) -> bool:
    """Whether `block` is the post-LN, ReLU, batch-first `nn.TransformerEncoderLayer` `_last_position` computes."""
    if not isinstance(block, nn.TransformerEncoderLayer):
        return False
    attention = block.self_attn
    return (
        not block.norm_first
        and block.activation_relu_or_gelu == 1
        and attention.batch_first
        and attention._qkv_same_embed_dim
        and attention.in_proj_bias is not None
        and attention.bias_k is None
        and not attention.add_zero_attn
    )


def _last_position(block: nn.TransformerEncoderLayer, hidden: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """`block(hidden, src_mask)[:, -1]` in eval mode: keys and values of every position, the rest for the last one.

    hidden [B, S, d]; blocked [B, heads, 1, S] (True = the last position may not attend there)."""
    attention = block.self_attn
    batch, length, dim = hidden.shape
    heads = attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    query = F.linear(hidden[:, -1:], weight[:dim], bias[:dim]).view(batch, 1, heads, dim // heads).transpose(1, 2)
    keys, values = F.linear(hidden, weight[dim:], bias[dim:]).view(batch, length, 2, heads, dim // heads).unbind(2)
    attended = F.scaled_dot_product_attention(query, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=~blocked)
    state = block.norm1(hidden[:, -1] + attention.out_proj(attended.transpose(1, 2).reshape(batch, dim)))
    return block.norm2(state + block.linear2(F.relu(block.linear1(state))))
