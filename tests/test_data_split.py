"""Leave-one-out split on hand-made sequences."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pmmrec.data import leave_one_out
from pmmrec.errors import ConfigError


def _arrays(*sequences: list[int]) -> list[np.ndarray]:
    return [np.asarray(sequence, dtype=np.int64) for sequence in sequences]


def test_split_targets_histories_and_dropped_users() -> None:
    sequences = _arrays([1, 2, 3, 4, 5], [7, 8], [9, 3, 4], [6])
    split = leave_one_out(sequences)
    assert split.user_rows.tolist() == [0, 2]
    assert [row.tolist() for row in split.train] == [[1, 2, 3], [9]]
    assert [row.tolist() for row in split.valid_history] == [[1, 2, 3], [9]]
    assert split.valid_target.tolist() == [4, 3]
    assert [row.tolist() for row in split.test_history] == [[1, 2, 3, 4], [9, 3]]
    assert split.test_target.tolist() == [5, 4]
    assert split.valid_target.dtype == np.int64 and split.test_target.dtype == np.int64
    assert split.num_users == 2


def test_min_length_and_max_history() -> None:
    sequences = _arrays([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4])
    split = leave_one_out(sequences, min_length=5, max_history=5)
    assert split.user_rows.tolist() == [0]
    assert split.train[0].tolist() == [4, 5, 6]
    assert split.valid_target.tolist() == [7]
    assert split.test_history[0].tolist() == [4, 5, 6, 7]
    assert split.test_target.tolist() == [8]


def test_filter_uses_full_length_before_truncation() -> None:
    split = leave_one_out(_arrays([1, 2, 3, 4, 5, 6]), min_length=6, max_history=6)
    assert split.user_rows.tolist() == [0]


def test_split_is_deterministic_and_does_not_mutate_input() -> None:
    sequences = _arrays([3, 1, 2, 5], [4, 4, 4])
    before = [sequence.copy() for sequence in sequences]
    first, second = leave_one_out(sequences), leave_one_out(sequences)
    assert all(np.array_equal(a, b) for a, b in zip(first.train, second.train, strict=True))
    assert np.array_equal(first.test_target, second.test_target)
    assert all(np.array_equal(a, b) for a, b in zip(sequences, before, strict=True))


@pytest.mark.parametrize(("min_length", "max_history"), [(2, None), (3, 2), (0, None)])
def test_invalid_options_are_refused(min_length: int, max_history: int | None) -> None:
    with pytest.raises(ConfigError):
        leave_one_out(_arrays([1, 2, 3]), min_length=min_length, max_history=max_history)


def test_no_user_long_enough_gives_empty_split() -> None:
    split = leave_one_out(_arrays([1, 2]))
    assert split.num_users == 0 and split.test_target.shape == (0,)


def test_the_split_always_holds_int64_indices() -> None:
    """Guards against keeping the caller's integer type (int32 arrays would reach torch as IntTensors)."""
    split = leave_one_out([np.array([1, 2, 3, 4], dtype=np.int32), [5, 6, 7]])
    for field in (split.train, split.valid_history, split.test_history):
        assert all(array.dtype == np.int64 for array in field)
    assert split.valid_target.dtype == np.int64 and split.test_target.dtype == np.int64


def test_split_record_round_trip_and_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Guards against a record that does not read back as written, and refusals that lose their reason."""
    import json

    from pmmrec.data import read_split_record, write_split_record

    assert read_split_record(tmp_path) is None  # an assembled, untrained model has none
    path = write_split_record(tmp_path, {"min_length": 3, "max_length": 20})
    assert read_split_record(tmp_path) == {"min_length": 3, "max_history": None, "max_length": 20, "window": None}
    fingerprint = {"name": "d", "items_sha256": "a" * 64, "users_sha256": "b" * 64}
    write_split_record(tmp_path, {"min_length": 3, "dataset": fingerprint})
    assert read_split_record(tmp_path)["dataset"] == fingerprint
    keys = "min_length, max_history, max_length, window, dataset, valid_targets_trained"
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) \['epochs'\]; expected {keys}$"):
        write_split_record(tmp_path, {"epochs": 3})
    write_split_record(tmp_path, {"min_length": 3, "valid_targets_trained": True})  # a refit's model: written then
    assert read_split_record(tmp_path)["valid_targets_trained"] is True
    write_split_record(tmp_path, {"min_length": 3, "valid_targets_trained": False})  # else left out, and read as absent
    assert "valid_targets_trained" not in json.loads(path.read_text())
    assert "valid_targets_trained" not in read_split_record(tmp_path)
    path.write_text(json.dumps([3]), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"expected an object with keys {keys}$"):
        read_split_record(tmp_path)
    refusals = {  # the schema names the key: unknown keys, wrong types, ranges (max_length 0 or 1e9), duplicates
        '{"min_length": 3, "epochs": 2}': "epochs: Extra inputs are not permitted",
        '{"max_length": 0}': "max_length: Input should be greater than or equal to 1",
        '{"max_length": 1000000000}': "max_length: Input should be less than or equal to 4096",
        '{"max_length": "20"}': "max_length: Input should be a valid integer",
        '{"max_length": 20, "max_length": 4}': "key 'max_length' appears twice",
        '{"min_length": 5, "max_history": 4}': "max_history (4) must be at least min_length (5)",
        '{"dataset": {"name": "d", "items_sha256": "x", "users_sha256": "y"}}': "dataset.items_sha256: String should match",
        '{"valid_targets_trained": "yes"}': "valid_targets_trained: Input should be a valid boolean",
    }
    for text, fragment in refusals.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            read_split_record(tmp_path)
