"""Many short integer sequences in one flat array: users' item sequences at any scale.

A list of a million small numpy arrays costs about 100 bytes of Python object per user beyond the data, is slow to
build and to pickle into DataLoader workers, and forked workers copy its pages as they touch reference counts.
`RaggedArray` keeps every row in one int64 array with start and stop offsets; a row is a view into it. It behaves
as a read-only sequence of 1-D arrays, so code written for `list[np.ndarray]` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

from pmmrec.errors import ConfigError


class RaggedArray(Sequence[np.ndarray]):
    """Row i is ``values[starts[i]:stops[i]]`` (a view); rows may share or skip parts of `values`."""

    __slots__ = ("starts", "stops", "values")

    def __init__(self, values: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.stops = np.asarray(stops, dtype=np.int64)
        if self.values.ndim != 1 or self.starts.shape != self.stops.shape or self.starts.ndim != 1:
            raise ConfigError("RaggedArray: values must be 1-D and starts/stops of one shape")

    @classmethod
    def from_offsets(cls, values: np.ndarray, offsets: np.ndarray) -> RaggedArray:
        """Rows stored back to back: row i = values[offsets[i]:offsets[i + 1]]."""
        offsets = np.asarray(offsets, dtype=np.int64)
        return cls(values, offsets[:-1], offsets[1:])

    @classmethod
    def from_rows(cls, rows: Iterable[Any]) -> RaggedArray:
        """Copy any iterable of 1-D integer sequences (a RaggedArray is returned as it is)."""
        if isinstance(rows, RaggedArray):
            return rows
        arrays = [np.asarray(row, dtype=np.int64) for row in rows]
        for index, array in enumerate(arrays):
            if array.ndim != 1:
                raise ConfigError(f"sequence {index} is not one-dimensional")
        lengths = np.fromiter((len(array) for array in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls.from_offsets(values, offsets)

    @property
    def lengths(self) -> np.ndarray:
        """Length of every row."""
        return self.stops - self.starts

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> RaggedArray: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.values[self.starts[index] : self.stops[index]]
        return self.take(index)

    def take(self, rows: Any) -> RaggedArray:
        """The rows selected by a slice, an index array or a boolean mask (views on the same values)."""
        return RaggedArray(self.values, self.starts[rows], self.stops[rows])

    def __iter__(self) -> Iterator[np.ndarray]:
        values = self.values
        for start, stop in zip(self.starts.tolist(), self.stops.tolist(), strict=True):
            yield values[start:stop]

    def __add__(self, other: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Concatenation as lists concatenate (a list of row views)."""
        return [*self, *other]

    def __radd__(self, other: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [*other, *self]

    def flat(self) -> np.ndarray:
        """Every row's values, row after row (a view when the rows are stored back to back)."""
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        if bool((self.starts[1:] == self.stops[:-1]).all()):
            return self.values[self.starts[0] : self.stops[-1]]
        lengths = self.lengths
        before = np.zeros(len(self), dtype=np.int64)
        np.cumsum(lengths[:-1], out=before[1:])
        return self.values[np.repeat(self.starts - before, lengths) + np.arange(int(lengths.sum()))]

    def __repr__(self) -> str:
        return f"RaggedArray({len(self)} rows, {int(self.lengths.sum())} values)"

    def __reduce__(self) -> tuple[Any, ...]:  # __slots__ without __dict__: pickle through the constructor
        return (RaggedArray, (self.values, self.starts, self.stops))


def total_length(sequences: Sequence[np.ndarray]) -> int:
    """Sum of the rows' lengths (no Python loop for a RaggedArray)."""
    if isinstance(sequences, RaggedArray):
        return int(sequences.lengths.sum())
    return int(sum(len(sequence) for sequence in sequences))


def item_counts(sequences: Sequence[np.ndarray], num_rows: int) -> np.ndarray:
    """How often each catalogue index 0..num_rows-1 occurs in the sequences (one bincount, not one per user)."""
    flat = sequences.flat() if isinstance(sequences, RaggedArray) else RaggedArray.from_rows(sequences).flat()
    return np.bincount(flat, minlength=num_rows)[:num_rows]
