"""Zero-training baselines, ranked by the same full-ranking code as models: popularity and content-knn.

- popularity: items by their number of training interactions (ties broken by catalogue order), the same for
  every user;
- content-knn: each item scored by the cosine between its embedding and the mean of the embeddings of the user's
  history, from the raw packaged text encoder (all-MiniLM-L6-v2, token states mean-pooled, nothing trained).
  Zero-shot transfer must beat it to show that pre-training learned transitions, not only what the text encoder
  already knew.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pmmrec.components import CreateOptions, TextEncoder, create_component
from pmmrec.components.kinds import masked_mean
from pmmrec.data import Dataset, LeaveOneOutSplit, tokenize_catalogue
from pmmrec.errors import ConfigError
from pmmrec.evaluation import rank_targets
from pmmrec.paths import cache_root

BASELINES: tuple[str, ...] = ("popularity", "content-knn")
# content-knn averages the last 20 history items by default: better than the whole history on the MovieLens target's
# validation split (NDCG@10 0.0296 vs 0.0264, docs/benchmarks.md), and the window the models read.
KNN_HISTORY = 20


def popularity_table(split: LeaveOneOutSplit, num_items: int) -> torch.Tensor:
    """A one-column score table [N+1, 1]: training counts, ties broken by catalogue order (earlier first)."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    for sequence in split.train:
        np.add.at(counts, sequence, 1.0)
    scores = counts - np.arange(num_items + 1) / (num_items + 1)  # < 1 apart: only breaks ties
    return torch.tensor(scores, dtype=torch.float64).unsqueeze(1)


@torch.inference_mode()
def raw_text_embeddings(
    texts: list[str], backbone: str = "minilm", batch_size: int = 128, device: torch.device | None = None
) -> torch.Tensor:
    """Mean-pooled token states of the pretrained backbone itself (no projection) for each text: [N+1, h], row 0 = 0."""
    encoder = create_component("text", CreateOptions(backbone=backbone, trainable_layers=0))
    assert isinstance(encoder, TextEncoder)
    device = device or torch.device("cpu")
    encoder.to(device).eval()
    ids, mask = tokenize_catalogue(texts, encoder.preprocessor, cache_dir=cache_root() / "tokens")
    rows = []
    for start in range(1, len(texts) + 1, batch_size):
        chunk_ids = ids[start : start + batch_size].to(device)
        chunk_mask = mask[start : start + batch_size].to(device)
        width = max(int(chunk_mask.sum(dim=1).max()), 1)
        states = encoder.frozen_prefix(chunk_ids[:, :width], chunk_mask[:, :width])  # every layer is frozen
        rows.append(masked_mean(states, chunk_mask[:, :width].bool()).float().cpu())
    hidden = rows[0].shape[1] if rows else 1
    return torch.cat([torch.zeros(1, hidden), *rows])


def content_knn_states(
    table: torch.Tensor, histories: Sequence[np.ndarray], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised item table [N+1, h], user vectors [M, h]): the mean of each history's embeddings.

    max_length: only the last max_length items of each history (None: the whole history).
    """
    normalised = torch.nn.functional.normalize(table, dim=1)
    users = torch.zeros(len(histories), table.shape[1])
    for row, history in enumerate(histories):
        window = np.asarray(history, dtype=np.int64)
        window = window[-max_length:] if max_length else window
        if len(window):
            users[row] = table[torch.as_tensor(window)].mean(dim=0)
    return normalised, torch.nn.functional.normalize(users, dim=1)


def baseline_ranks(
    name: str,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    which: str = "test",
    *,
    exclude_history: bool = True,
    max_length: int | None = KNN_HISTORY,
    backbone: str = "minilm",
    text_table: torch.Tensor | None = None,
) -> np.ndarray:
    """Per-user ranks of a baseline's targets on the valid or test split (full ranking, same tie rule as models).

    max_length: content-knn averages the last max_length history items (None: the whole history);
    text_table: precomputed `raw_text_embeddings` (content-knn), to reuse across splits.
    """
    if which not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {which!r}")
    histories = split.valid_history if which == "valid" else split.test_history
    targets = torch.as_tensor(split.valid_target if which == "valid" else split.test_target)
    if name == "popularity":
        table = popularity_table(split, dataset.num_items)
        users = torch.ones(len(histories), 1, dtype=torch.float64)
    elif name == "content-knn":
        raw = text_table if text_table is not None else raw_text_embeddings(dataset.item_texts, backbone)
        table, users = content_knn_states(raw, histories, max_length)
    else:
        raise ConfigError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")
    unique = [np.unique(h) if exclude_history else np.zeros(0, dtype=np.int64) for h in histories]
    indptr = torch.as_tensor(np.concatenate([[0], np.cumsum([len(h) for h in unique])]), dtype=torch.long)
    items = torch.as_tensor(np.concatenate(unique) if unique else np.zeros(0), dtype=torch.long)
    return rank_targets(users, table, targets.long(), indptr, items).numpy()
