"""Dropout with masks drawn from random 64-bit words: `nn.Dropout`'s distribution at under a third of its CPU cost.

Why: on a CPU, `nn.Dropout` draws its mask with `bernoulli_` (one generator call per element) and `torch.rand`
costs nearly as much. Here one 64-bit draw gives four 16-bit lanes; each lane's low 15 bits (uniform: `random_`
fills the low 63 bits of a word) decide one element, kept when at least `round(p * 2**15)`. The keep probability is
therefore p rounded to 1/32768 (at most 1.5e-5 from p) and kept elements are scaled by the inverse of the exact
keep probability, so the output's expectation is the input. Measured on the feed-forward activations of a default
ID batch: docs/benchmarks.md, "The default ID step". The random stream differs from `nn.Dropout`'s, so a seed gives
other numbers (same distribution). On a GPU the fused kernel is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LANE_LEVELS = 1 << 15  # the values of a lane's low 15 bits


def keep_mask(like: Tensor, p: float) -> Tensor:
    """A float tensor shaped like `like`: 0 with probability p (rounded to 1/32768), else 1 / (keep probability)."""
    numel = like.numel()
    threshold = round(p * _LANE_LEVELS)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=like.device).random_()
    lanes = words.view(torch.int16)[:numel].bitwise_and_(_LANE_LEVELS - 1)
    keep = lanes.to(torch.float32).ge_(threshold).mul_(_LANE_LEVELS / (_LANE_LEVELS - threshold))
    return keep.view(like.shape).to(like.dtype)  # compared in float32: bfloat16 cannot hold 15-bit lanes


class UniformDropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no weights, same state dict) with the mask from `keep_mask` on a CPU."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or input.device.type != "cpu":
            return super().forward(input)
        if round(self.p * _LANE_LEVELS) >= _LANE_LEVELS:  # p within 1/65536 of 1: every element dropped
            return input * 0.0
        keep = keep_mask(input, self.p)
        return input.mul_(keep) if self.inplace else input * keep


def use_uniform_dropout(module: nn.Module) -> None:
    """Swap every `nn.Dropout` inside `module` (Transformer layers' own included) for a `UniformDropout`."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, UniformDropout(child.p, inplace=child.inplace))
        else:
            use_uniform_dropout(child)
