"""What steers the training loop from outside a step: the per-epoch order of windows over processes, and stop
signals that end a run at a step boundary instead of mid-step."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch

from pmmrec.distributed import DistributedContext


def epoch_order(num_windows: int, epoch: int, seed: int, context: DistributedContext, passes: int = 1) -> list[int]:
    """This process's windows for `epoch`: a seeded permutation, padded to equal shards as DistributedSampler does.

    passes > 1: the epoch goes over the windows that many times, each pass in its own seeded order (pass 0 is the
    order of a one-pass epoch).
    """
    order: list[int] = []
    for index in range(passes):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + index * 7_919_111)
        order += torch.randperm(num_windows, generator=generator).tolist()
    world = context.world_size
    padded = order + order[: (-len(order)) % world]
    return padded[context.rank :: world]


class StopFlag:
    """Records SIGTERM/SIGINT instead of dying mid-step; restored on exit."""

    def __init__(self) -> None:
        self.raised: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            previous = {}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.raised = signum
