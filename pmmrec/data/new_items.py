"""New items: cold start in time. The items that appear last in a domain's time line are held out of training.

Rule `first-seen` (the default): order the catalogue by each item's first interaction in the domain (timestamp,
then file order) and call the last `share` of it *new*: items that did not exist while most of the history
happened. Each user keeps their last two interactions whatever they are (the validation and test targets); every
earlier interaction with a new item is dropped. A new item therefore occurs only as a validation target
(second-last item) or a test target (last item), never in a training sequence, so no model trains on it: ID models
cannot score it, content models rank it from its text and image.

Why earlier interactions are dropped: every interaction with a new item happens after the cut (the earliest first
interaction of a new item), and a model trained at the cut could not have seen one. On the MovieLens-100K target
domain at share 0.2, 1,140 of the 1,282 interactions with the 78 newest items sit before their user's last two
items (docs/datasets.md), so new items cannot be chosen "such that they only ever are targets" without dropping.

Rule `hash` (sha256 of the id, unrelated to time) is the rule used before issue 24, kept under this explicit name
only to reproduce tables made with it: it holds out some of the domain's most popular films, which is not cold
start.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pmmrec.data.split import MIN_SPLIT_LENGTH, LeaveOneOutSplit, training_items
from pmmrec.errors import DatasetError

NEW_ITEM_RULES: tuple[str, ...] = ("first-seen", "hash")
TOP_TARGETS = 5  # most popular new targets listed in dataset.json


def check_share(share: float) -> None:
    """Refuse a share outside [0, 1)."""
    if not 0.0 <= share < 1.0:
        raise DatasetError(f"--new-items must be a share in [0, 1), got {share}")


def new_item_count(num_items: int, share: float) -> int:
    """How many of `num_items` items a share holds out: share x N rounded half up."""
    check_share(share)
    return int(share * num_items + 0.5)


def newest_items(first_seen: Mapping[str, Any], share: float) -> list[str]:
    """The `new_item_count` items whose first interaction is latest, earliest first.

    first_seen: item id -> a sortable time key of its first interaction (e.g. (timestamp, file line)).
    """
    order = sorted(first_seen, key=lambda item: first_seen[item])
    count = new_item_count(len(order), share)
    return order[len(order) - count :] if count else []


def is_hashed_new_item(item_id: str, share: float) -> bool:
    """Rule `hash` (not cold start): sha256('cold:' + id), first 8 bytes as a big-endian fraction, below `share`."""
    digest = hashlib.sha256(f"cold:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def hashed_items(item_ids: Sequence[str], share: float) -> list[str]:
    """Rule `hash`: the items whose id hashes below `share` (catalogue order)."""
    check_share(share)
    return [item for item in item_ids if is_hashed_new_item(item, share)]


def hold_out_new_items(user_items: Sequence[Sequence[str]], new_items: Sequence[str]) -> list[list[str]]:
    """Each user's sequence without new items except as its last two items (validation and test targets)."""
    held = set(new_items)
    return [[item for item in items[:-2] if item not in held] + list(items[-2:]) for items in user_items]


def _popularity(targets: list[str], counts: Counter[str], rank_of: dict[str, int]) -> dict[str, Any]:
    """Interactions (before the hold-out) of the new items that are targets, summarised and the top ones listed."""
    if not targets:
        return {"users": 0}
    per_user = [counts[item] for item in targets]
    users_of = Counter(targets)
    top = sorted(users_of, key=lambda item: (-counts[item], item))[:TOP_TARGETS]
    return {
        "users": len(targets),
        "distinct_items": len(users_of),
        "interactions_before_hold_out": {
            "min": min(per_user),
            "median": float(statistics.median(per_user)),
            "max": max(per_user),
        },
        "most_popular": [
            {"item_id": item, "interactions": counts[item], "popularity_rank": rank_of[item], "users": users_of[item]}
            for item in top
        ],
    }


def new_items_record(
    rule: str,
    share: float,
    new_items: Sequence[str],
    before: Sequence[Sequence[str]],
    after: Sequence[Sequence[str]],
    cut: str | None = None,
) -> dict[str, Any]:
    """What dataset.json's preprocessing records: the rule, the items, what was dropped, who has a new target, and
    how popular those targets were before the hold-out (interactions in the domain; rank 1 = most popular).

    held_out: items the rule chose; items / item_ids: those still in the catalogue (they occur as a target);
    left_catalogue: held-out items that occurred only before their users' last two items, so no interaction is left
    (the catalogue holds only items that occur); never_in_training: catalogue items in no training sequence (the
    new items and any item that only ever is a last or second-last item). Users are counted as the split counts
    them: those with at least MIN_SPLIT_LENGTH interactions after the hold-out.
    """
    held = set(new_items)
    counts = Counter(item for items in before for item in items)
    rank_of = {item: rank for rank, (item, _n) in enumerate(sorted(counts.items(), key=lambda x: (-x[1], x[0])), 1)}
    kept = [items for items in after if len(items) >= MIN_SPLIT_LENGTH]
    remaining = {item for items in after for item in items}
    trained = {item for items in kept for item in items[:-2]}
    valid = [items[-2] for items in kept if items[-2] in held]
    test = [items[-1] for items in kept if items[-1] in held]
    return {
        "rule": rule,
        "share": share,
        "description": (
            "the items whose first interaction in the domain is latest" if rule == "first-seen"
            else "items whose sha256('cold:' + id) falls below the share (unrelated to time; not cold start)"
        ),
        "cut": cut,
        "held_out": len(new_items),
        "items": sum(1 for item in new_items if item in remaining),
        "item_ids": [item for item in new_items if item in remaining],
        "left_catalogue": sorted(held - remaining),
        "dropped_interactions": sum(len(b) - len(a) for b, a in zip(before, after, strict=True)),
        "users_below_min_length": sum(1 for items in after if len(items) < MIN_SPLIT_LENGTH),
        "never_in_training": len(remaining - trained),
        "valid_target_users": len(valid),
        "test_target_users": len(test),
        "valid_target_popularity": _popularity(valid, counts, rank_of),
        "test_target_popularity": _popularity(test, counts, rank_of),
    }  # fmt: skip


def new_target_mask(split: LeaveOneOutSplit, which: str = "test") -> np.ndarray:
    """True for users whose valid or test target never occurs in any training sequence (a new item)."""
    if which not in ("valid", "test"):
        raise DatasetError(f"split must be valid or test, got {which!r}")
    targets = split.valid_target if which == "valid" else split.test_target
    return ~np.isin(targets, training_items(split))
