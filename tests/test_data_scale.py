"""Data structures that keep memory linear and small at a million users (issue 16).

RaggedArray replaces a list of per-user arrays; the collator's cache of decoded images stays within its byte
budget and never travels into a worker process.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pmmrec.data import RaggedArray, item_counts, leave_one_out, read_users_tsv, total_length
from pmmrec.data.pixel_cache import PixelCache
from pmmrec.errors import ConfigError, DatasetError


def test_ragged_rows_are_views_and_behave_like_a_list() -> None:
    """Guards the list protocol that callers of Dataset.sequences rely on (index, iterate, len, +, pickle)."""
    rows = [[1, 2, 3], [4], [5, 6]]
    table = RaggedArray.from_rows(rows)
    assert len(table) == 3 and [row.tolist() for row in table] == rows
    assert table[2].tolist() == [5, 6] and np.shares_memory(table[2], table.values)
    assert [row.tolist() for row in table.take(np.array([2, 0]))] == [[5, 6], [1, 2, 3]]
    assert [row.tolist() for row in table[1:]] == [[4], [5, 6]]
    concatenated = table + [np.array([7])]  # noqa: RUF005 (the list protocol under test)
    assert [row.tolist() for row in concatenated] == [*rows, [7]]
    again = pickle.loads(pickle.dumps(table))
    assert [row.tolist() for row in again] == rows and total_length(again) == 6
    with pytest.raises(ConfigError, match="not one-dimensional"):
        RaggedArray.from_rows([np.zeros((2, 2))])


def test_flat_and_counts_of_rows_that_overlap_or_skip() -> None:
    """Guards flat() for split views (rows that skip values) and the one-bincount popularity count."""
    table = RaggedArray.from_rows([[1, 2, 3, 4], [2, 2, 5]])
    split = leave_one_out(table)
    assert [row.tolist() for row in split.train] == [[1, 2], [2]]
    assert split.train.flat().tolist() == [1, 2, 2]
    assert item_counts(split.train, 6).tolist() == [0, 1, 2, 0, 0, 0]
    assert item_counts([np.array([1, 1]), np.array([3])], 4).tolist() == [0, 2, 0, 1]


def test_users_tsv_is_read_into_one_flat_array(tmp_path: Path) -> None:
    """Guards against holding a Python object per user or interaction, and keeps the error messages."""
    users = tmp_path / "users.tsv"
    users.write_text("u1\ta b  a\nu2\tb\n", encoding="utf-8")
    ids, sequences = read_users_tsv(users, {"a": 1, "b": 2})
    assert ids == ["u1", "u2"] and isinstance(sequences, RaggedArray)
    assert [row.tolist() for row in sequences] == [[1, 2, 1], [2]] and sequences.values.dtype == np.int64
    users.write_text("u1\ta\nu2\tc\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"users\.tsv line 2: unknown item id 'c'"):
        read_users_tsv(users, {"a": 1})
    users.write_text("u1\ta\nu2\ta\nu1\ta\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 3: duplicate user id 'u1' \\(first on line 1\\)"):
        read_users_tsv(users, {"a": 1})


def test_pixel_cache_stays_within_its_budget_and_is_not_pickled() -> None:
    """Guards against unbounded memory from decoded images, and against workers inheriting a pickled copy."""
    image = np.zeros((4, 4, 3), dtype=np.uint8)  # 48 bytes
    cache = PixelCache(max_bytes=3 * image.nbytes)
    loads: list[list[int]] = []

    def load(indices: list[int]) -> list[np.ndarray | None]:
        loads.append(indices)
        return [None if index == 9 else image + index for index in indices]

    first = cache.get_many([1, 2, 9, 1], load)
    assert loads == [[1, 2, 9, 1]] and first[2] is None and int(first[3][0, 0, 0]) == 1
    assert cache.get_many([2, 9], load)[0] is not None and len(loads) == 1  # hits, no load
    cache.get_many([3, 4, 5], load)
    assert cache.bytes <= cache.max_bytes
    cache.get_many([1], load)
    assert loads[-1] == [1]  # evicted (least recently used), so loaded again
    assert pickle.loads(pickle.dumps(cache)).bytes == 0
    off = PixelCache(0)
    off.get_many([1, 1], load)
    assert off.bytes == 0 and off.hits == 0
