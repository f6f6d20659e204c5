"""The next-item cross-entropy over every known item, computed in row chunks that stay in the CPU's cache.

Why: with the full softmax the [R, U] logits (4,700 rows x 1,678 items for a default ID batch, 32 MB) are written by
the score product, read and written again by the own-item mask, the log-softmax and its backward, and read by two
gradient products: on a 2-core CPU that traffic, not the multiply-adds, was the larger part of an ID step
(docs/benchmarks.md, "The default ID step"). Here each chunk of rows is scored, masked, normalised and turned into
its gradient while it is in cache, and only the gradients of the states [R, d] and of the items [U, d] are kept.

The values are those of `F.cross_entropy(mask_own_items(states @ items.T / T - correction, ...), targets)` up to
float32 summation order (tests/test_chunked_softmax.py); the gradients are computed in the forward pass (the loss is
only ever computed to be differentiated) and scaled by the incoming gradient in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Logits per chunk (float32: 2 MiB, inside a core's share of cache); the rows per chunk follow from the catalogue's
# size (312 rows for the 1,678 items of MovieLens-100K).
CHUNK_LOGITS = 256 * 2048


def chunked_cross_entropy(
    states: Tensor,
    items: Tensor,
    targets: Tensor,
    own_columns: Tensor,
    temperature: float = 1.0,
    correction: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy of rows `states` [R, d] against every column of `items` [U, d].

    `targets` [R]: each row's target column. `own_columns` [R, S]: columns masked to -inf in that row (the user's own
    items), where an entry equal to the row's target masks nothing. `correction` [U]: subtracted from every row's
    logits (None: none). Float32 throughout.
    """
    return _ChunkedCrossEntropy.apply(states, items, targets, own_columns, temperature, correction)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        states: Tensor,
        items: Tensor,
        targets: Tensor,
        own_columns: Tensor,
        temperature: float,
        correction: Tensor | None,
    ) -> Tensor:
        rows, columns = states.shape[0], items.shape[0]
        scale = 1.0 / temperature
        grad_states = torch.empty_like(states)
        grad_items = torch.zeros_like(items)
        total = states.new_zeros((), dtype=torch.float64)
        step = max(1, CHUNK_LOGITS // max(columns, 1))
        minus_inf = states.new_full((), float("-inf"))
        for start in range(0, rows, step):
            end = min(start + step, rows)
            chunk = states[start:end]
            logits = torch.mm(chunk, items.t())
            if scale != 1.0:
                logits.mul_(scale)
            if correction is not None:
                logits.sub_(correction)
            chunk_targets = targets[start:end].unsqueeze(1)
            target_logits = logits.gather(1, chunk_targets)
            local = torch.arange(end - start, device=states.device).unsqueeze(1)
            logits.index_put_((local, own_columns[start:end]), minus_inf)
            logits.scatter_(1, chunk_targets, target_logits)
            # One exp pass: the softmax in place of the logits, and log-sum-exp from its row sums.
            peak = logits.amax(dim=1, keepdim=True)
            probabilities = logits.sub_(peak).exp_()
            sums = probabilities.sum(dim=1, keepdim=True)
            total += (peak + sums.log() - target_logits).sum(dtype=torch.float64)
            # d loss / d logits = (softmax - onehot) / R, in place.
            probabilities.div_(sums)
            probabilities.scatter_add_(1, chunk_targets, probabilities.new_full(chunk_targets.shape, -1.0))
            probabilities.mul_(scale / rows)
            torch.mm(probabilities, items, out=grad_states[start:end])
            grad_items.addmm_(probabilities.t(), chunk)
        ctx.save_for_backward(grad_states, grad_items)
        return (total / rows).to(states.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_states, grad_items = ctx.saved_tensors
        return grad_states * grad_output, grad_items * grad_output, None, None, None, None
