"""Training windows: which of a user's training interactions each epoch trains, as windows of max_len + 1 items.

Every scheme yields left-padded windows (inputs [:-1], next-item targets [1:]). "tiles" makes every training
interaction (but each user's first) a target once per epoch; docs/training.md, "Which interactions train".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pmmrec.data.ragged import RaggedArray, item_counts
from pmmrec.errors import ConfigError

__all__ = ["WINDOW_SCHEMES", "TrainSequences", "left_pad", "tile_ends"]


def left_pad(sequence: np.ndarray, length: int) -> np.ndarray:
    """The last `length` items of `sequence`, left-padded with 0 to exactly `length`."""
    window = np.zeros(length, dtype=np.int64)
    tail = np.asarray(sequence, dtype=np.int64)[-length:] if length > 0 else np.zeros(0, dtype=np.int64)
    if len(tail):
        window[length - len(tail) :] = tail
    return window


WINDOW_SCHEMES: tuple[str, ...] = ("tiles", "crop", "last")


def tile_ends(length: int, max_len: int) -> list[int]:
    """Ends (exclusive) of the windows that tile a training sequence of `length` items, the last one first.

    Windows hold max_len + 1 items and step back by max_len, so consecutive windows share one item: window
    ending at e has targets e - max_len .. e - 1, and together the windows make every item but the first a target
    exactly once. A sequence too short to have a target still gives its one window (it trains nothing).
    """
    ends = [length]
    while ends[-1] - max_len >= 2:
        ends.append(ends[-1] - max_len)
    return ends


class TrainSequences(torch.utils.data.Dataset):
    """Training windows of max_len + 1 items, left-padded with 0: inputs [:-1], next-item targets [1:].

    scheme "tiles" (default): each user's whole training sequence is cut into windows ending at its last item
    (see `tile_ends`), so every training interaction but the user's first is a target once per epoch;
    "crop": one window per user per epoch, ending at a random position (seeded by `seed` and the epoch: call
    `set_epoch`), full-length where the sequence allows, so each epoch is as short as one window per user;
    "last": only each user's last max_len + 1 items, every epoch (the reference implementation's behaviour).
    """

    def __init__(
        self, train_sequences: Sequence[np.ndarray], max_len: int, scheme: str = "tiles", seed: int = 0
    ) -> None:
        if max_len < 1:
            raise ConfigError(f"max_len must be positive, got {max_len}")
        if scheme not in WINDOW_SCHEMES:
            raise ConfigError(f"window scheme must be one of {', '.join(WINDOW_SCHEMES)}, got {scheme!r}")
        # One flat array + offsets (no Python object per user: cheap to pickle into DataLoader workers).
        self.sequences = (
            train_sequences if isinstance(train_sequences, RaggedArray) else RaggedArray.from_rows(train_sequences)
        )
        self.max_len = max_len
        self.scheme = scheme
        self.seed = seed
        self.window_rows = np.zeros(0, dtype=np.int64)  # user row of each window
        self.window_ends = np.zeros(0, dtype=np.int64)  # end of each window in its row, exclusive
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's windows (only "crop" depends on the epoch); vectorised over users."""
        lengths = self.sequences.lengths
        rows = np.arange(len(lengths), dtype=np.int64)
        if self.scheme == "tiles":  # tile_ends for every row at once
            per_row = 1 + np.maximum(0, (lengths - 2) // self.max_len)
            self.window_rows = np.repeat(rows, per_row)
            first = np.cumsum(per_row) - per_row
            within = np.arange(int(per_row.sum()), dtype=np.int64) - np.repeat(first, per_row)
            self.window_ends = lengths[self.window_rows] - within * self.max_len
        elif self.scheme == "last":
            self.window_rows, self.window_ends = rows, lengths.copy()
        else:
            rng = np.random.default_rng([self.seed, epoch])
            lowest = np.minimum(lengths, self.max_len + 1)
            self.window_rows = rows
            self.window_ends = rng.integers(lowest, lengths + 1) if len(rows) else lengths.copy()

    @property
    def windows(self) -> list[tuple[int, int]]:
        """This epoch's windows as (user row, end) pairs, for inspection (training reads the arrays)."""
        return list(zip(self.window_rows.tolist(), self.window_ends.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.window_rows)

    def __getitem__(self, index: int) -> np.ndarray:
        row, end = int(self.window_rows[index]), int(self.window_ends[index])
        return left_pad(self.sequences[row][:end], self.max_len + 1)

    def item_counts(self, num_items: int) -> np.ndarray:
        """Interactions per catalogue index [N+1] over the items this dataset trains on (popularity estimates).

        "tiles" and "crop" train on whole sequences, "last" on each user's last max_len + 1 items.
        """
        used = self.sequences
        if self.scheme == "last":
            starts = np.maximum(used.starts, used.stops - (self.max_len + 1))
            used = RaggedArray(used.values, starts, used.stops)
        return item_counts(used, num_items + 1).astype(np.float64)
