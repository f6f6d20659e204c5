"""Bitwise-reproducible training on request: deterministic kernels and one intra-op CPU thread.

Floating-point sums depend on how an operation is split between threads, so CPU training gives different weights
with a different number of intra-op threads (torch uses one per core by default: another machine, another
result). `deterministic: true` in the training config runs the whole job with one intra-op thread and
`torch.use_deterministic_algorithms(True)` (cuDNN deterministic, no autotuning), slower but the same bits on
every machine with the same torch build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within the block, every kernel is deterministic and the CPU runs one intra-op thread; restored after."""
    if not enabled:
        yield
        return
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS requires
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        threads, algorithms, warn_only, cudnn_deterministic, cudnn_benchmark = previous
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
