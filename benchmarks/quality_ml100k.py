"""The defaults check of benchmarks/quality.py on the whole MovieLens-100K, and the window-scheme study.

`pmmrec finetune --data ML100K_ALL --item-tower id --out run` (and `--text-backbone minilm`) with no other option is
configuration c0 of its tower; c1..c7 are tuned recipes. All train with the default seed (42) and without the test
split; the test split is evaluated once for c0 and once for the configuration with the best validation NDCG@10
(the best tuned recipe), which is also evaluated under RecBole's protocol (history included in the ranking).

The window study trains the default configuration with each window scheme (tiles, crop, last) on validation only.
"""

from __future__ import annotations

from typing import Any

import quality_jobs as jobs

LONG = {"batch_size": 128, "max_epochs": 200, "patience": 10}
ML100K_CONFIGS: dict[str, list[dict[str, Any]]] = {
    "id": [
        {},
        {"model": {"dropout": 0.3}},
        {**LONG, "max_length": 50, "model": {"dropout": 0.2}},
        {**LONG, "max_length": 50, "model": {"dropout": 0.5}},
        {**LONG, "max_length": 200, "model": {"dropout": 0.2}},
        {**LONG, "max_length": 200, "model": {"dropout": 0.5}},
        {**LONG, "max_length": 50, "model": {"dropout": 0.2}, "objectives": {"next_item": {"softmax": "in_batch"}}},
        {**LONG, "max_length": 50, "model": {"dropout": 0.2}, "fresh_lr": 3e-3},
    ],
    "text": [
        {},
        {"objectives": {"next_item": {"softmax": "full"}}},
        {"pretrained_lr": 3e-4},
        {"fresh_lr": 3e-3},
        {"fresh_lr": 3e-4},
        {"model": {"dropout": 0.3}},
        {"pretrained_lr": 3e-4, "objectives": {"next_item": {"softmax": "full"}}},
        {"batch_size": 64},
    ],
}
WINDOWS = ("tiles", "crop", "last")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def ml100k_overrides(tower: str, index: int) -> dict[str, Any]:
    base = {"model": {"item_tower": "id"}} if tower == "id" else {"model": {"text_backbone": "minilm"}}
    return _merge(_merge(base, ML100K_CONFIGS[tower][index]), {"evaluate_test": False})


def best_config(results: dict[str, Any], tower: str) -> int:
    scores = [results[f"ml100k:{tower}:{i}"]["valid_ndcg@10"] for i in range(len(ML100K_CONFIGS[tower]))]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def ml100k_tasks(root: str, device: str | None, task: Any) -> list[Any]:
    """Search, tests once (default and best) and the RecBole-protocol evaluation, per tower; the window study."""
    tasks = []
    for tower, configs in ML100K_CONFIGS.items():
        keys = [f"ml100k:{tower}:{i}" for i in range(len(configs))]
        for index, key in enumerate(keys):
            tasks.append(task(key, jobs.finetune, ["data:ml100k"],
                              lambda r, t=tower, i=index: (root, f"ml100k/{t}/c{i}", "ml100k", ml100k_overrides(t, i), device),
                              priority=7 if tower == "text" else 5))  # fmt: skip
        tasks.append(task(f"ml100k-test:{tower}:default", jobs.test_once, [keys[0]],
                          lambda r, t=tower: (root, f"ml100k/{t}/c0", "ml100k", device)))  # fmt: skip
        tasks.append(task(f"ml100k-test:{tower}:best", jobs.protocols, keys,
                          lambda r, t=tower: (root, f"ml100k/{t}/c{best_config(r, t)}", "ml100k", device)))  # fmt: skip
    for window in WINDOWS[1:]:
        overrides = _merge(ml100k_overrides("id", 0), {"window": window})
        tasks.append(task(f"window:ml100k:id:{window}", jobs.finetune, ["data:ml100k"],
                          lambda r, w=window, o=overrides: (root, f"ml100k/window-{w}", "ml100k", o, device)))  # fmt: skip
    return tasks
