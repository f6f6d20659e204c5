"""Module modes: `eval_mode` runs a block with a module in eval mode and puts it back the way it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@contextmanager
def eval_mode(module: M) -> Iterator[M]:
    """`module` in eval mode (no dropout) inside the block; afterwards in the mode it was in, also after an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
