"""Leave-one-out split by time, as the paper evaluates: last item = test target, second-last = validation target."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.data.ragged import RaggedArray
from pmmrec.errors import ConfigError
from pmmrec.fileio import write_json
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.schemas import SplitRecordFile

MIN_SPLIT_LENGTH = 3  # one training item, one validation target, one test target


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Per kept user (row r of each field belongs to Dataset user `user_rows[r]`).

    train: sequence without its last two items (every next item is a training target);
    valid_history / valid_target: the train sequence and the second-last item;
    test_history / test_target: the sequence without its last item and the last item.
    The histories are RaggedArrays: views into the dataset's one flat array, no copy per user.
    """

    train: RaggedArray
    valid_history: RaggedArray
    valid_target: np.ndarray
    test_history: RaggedArray
    test_target: np.ndarray
    user_rows: np.ndarray

    @property
    def num_users(self) -> int:
        """Number of users kept by the split."""
        return len(self.user_rows)


def leave_one_out(
    sequences: Sequence[np.ndarray], min_length: int = MIN_SPLIT_LENGTH, max_history: int | None = None
) -> LeaveOneOutSplit:
    """Split chronological sequences; users shorter than `min_length` are dropped.

    `max_history` keeps only each user's last `max_history` items before splitting (the paper uses
    max_seq_len + 3); None keeps everything. Users are filtered on their full length, then truncated, as the
    reference preprocessing does. Deterministic: no randomness involved. Vectorised over users (offsets only).
    """
    if min_length < MIN_SPLIT_LENGTH:
        raise ConfigError(
            f"min_length must be at least {MIN_SPLIT_LENGTH} (train, validation and test need one item each), got {min_length}"
        )
    if max_history is not None and max_history < min_length:
        raise ConfigError(f"max_history ({max_history}) must be at least min_length ({min_length})")
    table = RaggedArray.from_rows(sequences)
    rows = np.flatnonzero(table.lengths >= min_length)
    starts, stops = table.starts[rows], table.stops[rows]
    if max_history is not None:
        starts = np.maximum(starts, stops - max_history)
    train = RaggedArray(table.values, starts, stops - 2)
    return LeaveOneOutSplit(
        train=train,
        valid_history=train,
        valid_target=table.values[stops - 2].copy(),
        test_history=RaggedArray(table.values, starts, stops - 1),
        test_target=table.values[stops - 1].copy(),
        user_rows=rows.astype(np.int64),
    )


def training_items(split: LeaveOneOutSplit, rows: np.ndarray | None = None) -> np.ndarray:
    """Sorted distinct catalogue indices that occur in some training sequence (what training can know); `rows`:
    only the training sequences of these split rows (see `user_share_rows`)."""
    train = split.train if rows is None else RaggedArray.from_rows(split.train).take(rows)
    return np.unique(RaggedArray.from_rows(train).flat()).astype(np.int64)


def known_items(
    split: LeaveOneOutSplit, item_ids: Sequence[str], extra: Sequence[str] = (), rows: np.ndarray | None = None
) -> np.ndarray:
    """The catalogue indices known at training time: items of the training sequences (of `rows` only, when given)
    plus `extra` ids (items that exist at training time without a training interaction), sorted. Never-trained items
    are not in it: they are never a negative of the next-item softmax, and an ID tower has no trained row for them
    (issue 24)."""
    known = training_items(split, rows)
    if extra:
        index = {item_id: position for position, item_id in enumerate(item_ids, start=1)}
        missing = [item_id for item_id in extra if item_id not in index]
        if missing:
            raise ConfigError(f"known_items: item id(s) not in the catalogue: {missing[:5]}")
        known = np.union1d(known, np.asarray([index[item_id] for item_id in extra], dtype=np.int64))
    return known.astype(np.int64)


def user_share_rows(num_users: int, share: float, seed: int = 0) -> np.ndarray:
    """Sorted split rows of the users whose training sequences train when only `share` of them do (a learning curve).

    The users are put in one order by a permutation seeded by `seed` alone, and the first max(1, round(share x
    num_users)) of that order are taken (halves round up), so the samples of one seed are nested: the 5% sample is
    inside the 10% one, and so on. Only training changes: every user keeps their validation and test target and
    their history as the model's input at evaluation, so every share is evaluated on the same users.
    """
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"the share of training users must be in (0, 1], got {share}")
    if num_users <= 0:
        return np.zeros(0, dtype=np.int64)
    count = min(num_users, max(1, int(np.floor(share * num_users + 0.5))))
    order = np.random.default_rng(seed).permutation(num_users)
    return np.sort(order[:count]).astype(np.int64)


SPLIT_RECORD = "data_split.json"
SPLIT_KEYS = ("min_length", "max_history", "max_length", "window")
# + the training dataset's fingerprint (`dataset_fingerprint`) and, for a refit's model, that it trained on the
# validation targets (written only then)
RECORD_KEYS = (*SPLIT_KEYS, "dataset", "valid_targets_trained")


def write_split_record(folder: Path, record: dict[str, Any]) -> Path:
    """Record in a model folder how its training run split and windowed the data (`pmmrec evaluate` reads it).

    Keys: min_length, max_history (null = every interaction), max_length (the window's input length), window,
    dataset (name, items_sha256, users_sha256: what the run trained on; written only when given) and
    valid_targets_trained (true for a refit's model, whose validation split is not held out; written only then).
    """
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise ConfigError(f"split record: unknown key(s) {unknown}; expected {', '.join(RECORD_KEYS)}")
    document = {key: record.get(key) for key in SPLIT_KEYS}
    if record.get("dataset") is not None:
        document["dataset"] = record["dataset"]
    if record.get("valid_targets_trained"):
        document["valid_targets_trained"] = True
    validate_strictly(SplitRecordFile, document, "split record", error=ConfigError)
    path = Path(folder) / SPLIT_RECORD
    write_json(path, document)
    return path


def read_split_record(folder: Path | str) -> dict[str, Any] | None:
    """The split record of a model folder, or None when the folder has none (an assembled, untrained model).

    Read within size and depth limits and validated strictly (types, ranges: `max_length` 1e9 or 0 is refused, naming
    the key). Whether the file is the one the model's manifest pins is `pmmrec.model.read_model_split_record`'s check.
    """
    path = Path(folder) / SPLIT_RECORD
    if not os.path.lexists(path):
        return None
    record = read_json_file(path, error=ConfigError, max_bytes=1 << 16, max_depth=4)
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: expected an object with keys {', '.join(RECORD_KEYS)}")
    validated = validate_strictly(SplitRecordFile, record, str(path), error=ConfigError).model_dump()
    if validated["dataset"] is None:  # a model trained before the dataset was recorded
        del validated["dataset"]
    if not validated["valid_targets_trained"]:
        del validated["valid_targets_trained"]
    return validated
