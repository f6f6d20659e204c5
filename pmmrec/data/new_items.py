"""New items: a deterministic share of a catalogue held out of every training sequence.

A held-out item occurs only as a user's validation target (second-last item) or test target (last item), so no
model ever trains on an interaction with it: ID models cannot score it, content models rank it from its text and
image. Holding new items out of validation as well as test lets the validation split, which selects epochs and
configurations, see the same kind of targets as the test split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pmmrec.data.split import LeaveOneOutSplit
from pmmrec.errors import DatasetError


def is_new_item(item_id: str, fraction: float) -> bool:
    """Whether an item is held out: sha256('cold:' + id), first 8 bytes as a big-endian fraction, below `fraction`."""
    digest = hashlib.sha256(f"cold:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def hold_out_new_items(
    item_ids: Sequence[str], user_items: Sequence[Sequence[str]], fraction: float
) -> tuple[list[list[str]], list[str]]:
    """Sequences without the new items except as each user's last two items, and the new items (catalogue order).

    Users keep their last two interactions whatever they are; earlier interactions with a new item are dropped.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"--new-items must be a share in [0, 1), got {fraction}")
    new = [item for item in item_ids if is_new_item(item, fraction)]
    held = set(new)
    sequences = [[item for item in items[:-2] if item not in held] + list(items[-2:]) for items in user_items]
    return sequences, new


def new_items_note(count: int, fraction: float) -> str:
    """What dataset.json's preprocessing records about the held-out items."""
    return (
        f"{count} items (sha256 rule, share {fraction}) held out as new items: they occur only as a user's last two "
        "items (validation and test targets), never in a training sequence"
    )


def new_target_mask(split: LeaveOneOutSplit, which: str = "test") -> np.ndarray:
    """True for users whose valid or test target never occurs in any training sequence (a new item)."""
    if which not in ("valid", "test"):
        raise DatasetError(f"split must be valid or test, got {which!r}")
    seen = np.unique(np.concatenate(split.train)) if split.train else np.zeros(0, dtype=np.int64)
    targets = split.valid_target if which == "valid" else split.test_target
    return ~np.isin(targets, seen)
