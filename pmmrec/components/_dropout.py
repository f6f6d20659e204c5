"""Dropout drawn from uniform numbers: the same distribution as `nn.Dropout`, at less than half its CPU cost.

Why: on a CPU, `nn.Dropout` draws its mask with `bernoulli_`, which is slow: on the feed-forward activations of a
default ID batch it took 2.6 times as long as this module (docs/benchmarks.md, "The default ID step"). Each
element is kept with probability 1 - p and scaled by 1 / (1 - p), as `nn.Dropout` does; the random stream differs,
so a run's numbers at a given seed differ from those with `nn.Dropout` (not their distribution). On a GPU the fused
kernel is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class UniformDropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no weights, same state dict) with the mask drawn as uniform >= p on a CPU."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or input.device.type != "cpu":
            return super().forward(input)
        if self.p == 1.0:
            return input * 0.0
        keep = torch.rand_like(input).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return input.mul_(keep) if self.inplace else input * keep


def use_uniform_dropout(module: nn.Module) -> None:
    """Swap every `nn.Dropout` inside `module` (Transformer layers' own included) for a `UniformDropout`."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, UniformDropout(child.p, inplace=child.inplace))
        else:
            use_uniform_dropout(child)
