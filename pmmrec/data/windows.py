"""Training windows: which of a user's training interactions each epoch trains, as windows of max_len + 1 items.

Every scheme yields left-padded windows (inputs [:-1], next-item targets [1:]). "tiles" makes every training
interaction (but each user's first) a target once per epoch; docs/training.md, "Which interactions train".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
        self.sequences = [np.asarray(sequence, dtype=np.int64) for sequence in train_sequences]
        self.max_len = max_len
        self.scheme = scheme
        self.seed = seed
        self.windows: list[tuple[int, int]] = []  # (user row, end of the window, exclusive)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's windows (only "crop" depends on the epoch)."""
        lengths = [len(sequence) for sequence in self.sequences]
        if self.scheme == "tiles":
            self.windows = [(row, end) for row, length in enumerate(lengths) for end in tile_ends(length, self.max_len)]
        elif self.scheme == "last":
            self.windows = [(row, length) for row, length in enumerate(lengths)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            lowest = [min(length, self.max_len + 1) for length in lengths]
            self.windows = [
                (row, int(rng.integers(low, length + 1)))
                for row, (low, length) in enumerate(zip(lowest, lengths, strict=True))
            ]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> np.ndarray:
        row, end = self.windows[index]
        return left_pad(self.sequences[row][:end], self.max_len + 1)

    def item_counts(self, num_items: int) -> np.ndarray:
        """Interactions per catalogue index [N+1] over the items this dataset trains on (popularity estimates).

        "tiles" and "crop" train on whole sequences, "last" on each user's last max_len + 1 items.
        """
        counts = np.zeros(num_items + 1, dtype=np.float64)
        for sequence in self.sequences:
            used = sequence[-(self.max_len + 1) :] if self.scheme == "last" else sequence
            np.add.at(counts, used, 1.0)
        return counts
