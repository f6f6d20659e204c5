"""Zero-training baselines, ranked by the same full-ranking code as models: popularity and content-knn.

- popularity: items by their number of training interactions (ties broken by catalogue order), the same for
  every user; optionally only each user's last `window` training interactions count (a recency window);
- content-knn: each item scored by the cosine between its embedding and the mean of the embeddings of the user's
  last `window` history items (raw or L2-normalised vectors), from the raw packaged text encoder
  (all-MiniLM-L6-v2, token states mean-pooled, nothing trained). Zero-shot transfer must beat it to show that
  pre-training learned transitions, not only what the text encoder already knew.

Baselines are tuned like models (issue 24): `tune_baseline` searches their configurations (`baseline_grid`) on
the validation split and evaluates the test split once, at the selected one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pmmrec.components import CreateOptions, TextEncoder, create_component
from pmmrec.components.kinds import masked_mean
from pmmrec.data import Dataset, LeaveOneOutSplit, RaggedArray, tokenize_catalogue
from pmmrec.errors import ConfigError
from pmmrec.evaluation import rank_targets
from pmmrec.paths import cache_root

BASELINES: tuple[str, ...] = ("popularity", "content-knn")
# content-knn averages the last 20 history items unless told otherwise (`pmmrec evaluate --baseline content-knn`):
# the window the models read. The demo and benchmarks/quality.py search the window on validation (tune_baseline).
KNN_HISTORY = 20
# The windows searched (issue 24: at least these); None = the whole history.
SEARCH_WINDOWS: tuple[int | None, ...] = (1, 2, 3, 5, 10, 20, None)


@dataclass(frozen=True)
class BaselineConfig:
    """One configuration of a baseline (what the search varies).

    window: content-knn averages the last `window` history items; popularity counts each user's last `window`
    training interactions (None: all); normalise: content-knn averages L2-normalised item vectors, not raw ones.
    """

    window: int | None = None
    normalise: bool = False

    def label(self) -> str:
        window = "all" if self.window is None else f"last {self.window}"
        return f"{window}, normalised" if self.normalise else window


def baseline_grid(name: str) -> list[BaselineConfig]:
    """The configurations searched: popularity: SEARCH_WINDOWS (7); content-knn: SEARCH_WINDOWS x raw/normalised
    vectors (14)."""
    if name == "popularity":
        return [BaselineConfig(window) for window in SEARCH_WINDOWS]
    if name == "content-knn":
        return [BaselineConfig(window, normalise) for normalise in (False, True) for window in SEARCH_WINDOWS]
    raise ConfigError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")


def popularity_table(
    split: LeaveOneOutSplit, num_items: int, window: int | None = None, train_rows: np.ndarray | None = None
) -> torch.Tensor:
    """A one-column score table [N+1, 1]: training counts (of each user's last `window` training interactions when
    given; of the users of `train_rows` only, when given: a learning curve's share), ties broken by catalogue order
    (earlier first)."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    train = split.train if train_rows is None else RaggedArray.from_rows(split.train).take(train_rows)
    for sequence in train:
        np.add.at(counts, sequence[-window:] if window else sequence, 1.0)
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
    table: torch.Tensor, histories: Sequence[np.ndarray], max_length: int | None = None, normalise: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised item table [N+1, h], user vectors [M, h]): the mean of each history's embeddings.

    max_length: only the last max_length items of each history (None: the whole history); normalise: average the
    L2-normalised item vectors (each item weighs the same) instead of the raw ones.
    """
    normalised = torch.nn.functional.normalize(table, dim=1)
    source = (normalised if normalise else table).to(torch.float64)
    rows = RaggedArray.from_rows(histories)
    lengths = torch.as_tensor(rows.lengths)
    stops = torch.cumsum(lengths, 0)  # each user's window is flat[stop - size : stop]
    sizes = lengths.clamp_max(max_length) if max_length else lengths
    prefix = torch.zeros(int(stops[-1]) + 1 if len(rows) else 1, table.shape[1], dtype=torch.float64)
    torch.cumsum(source[torch.as_tensor(rows.flat())], 0, out=prefix[1:])
    sums = prefix[stops] - prefix[stops - sizes]
    users = (sums / sizes.clamp_min(1).unsqueeze(1)).to(table.dtype)
    return normalised, torch.nn.functional.normalize(users, dim=1)


def baseline_ranks(
    name: str,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    which: str = "test",
    *,
    exclude_seen: bool = True,
    max_length: int | None = KNN_HISTORY,
    backbone: str = "minilm",
    text_table: torch.Tensor | None = None,
    normalise: bool = False,
    popularity_window: int | None = None,
    train_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Per-user ranks of a baseline's targets on the valid or test split (full ranking, same tie rule as models).

    max_length: content-knn averages the last max_length history items (None: the whole history); normalise:
    content-knn averages normalised vectors; popularity_window: popularity counts each user's last N training
    interactions (None: all); text_table: precomputed `raw_text_embeddings` (content-knn), to reuse across splits;
    train_rows: popularity counts only these users' training sequences (a learning curve's share; content-knn
    trains nothing, so it ignores them).
    """
    if which not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {which!r}")
    histories = split.valid_history if which == "valid" else split.test_history
    targets = torch.as_tensor(split.valid_target if which == "valid" else split.test_target)
    if name == "popularity":
        table = popularity_table(split, dataset.num_items, popularity_window, train_rows)
        users = torch.ones(len(histories), 1, dtype=torch.float64)
    elif name == "content-knn":
        raw = text_table if text_table is not None else raw_text_embeddings(dataset.item_texts, backbone)
        table, users = content_knn_states(raw, histories, max_length, normalise)
    else:
        raise ConfigError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")
    unique = [np.unique(h) if exclude_seen else np.zeros(0, dtype=np.int64) for h in histories]
    indptr = torch.as_tensor(np.concatenate([[0], np.cumsum([len(h) for h in unique])]), dtype=torch.long)
    items = torch.as_tensor(np.concatenate(unique) if unique else np.zeros(0), dtype=torch.long)
    return rank_targets(users, table, targets.long(), indptr, items).numpy()


def config_ranks(
    name: str,
    config: BaselineConfig,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    which: str,
    text_table: torch.Tensor | None = None,
    train_rows: np.ndarray | None = None,
) -> np.ndarray:
    """`baseline_ranks` at one searched configuration (history excluded)."""
    if name == "popularity":
        return baseline_ranks(name, dataset, split, which, popularity_window=config.window, train_rows=train_rows)
    return baseline_ranks(name, dataset, split, which, max_length=config.window, normalise=config.normalise,
                          text_table=text_table)  # fmt: skip


@dataclass
class BaselineSearch:
    """A baseline tuned on validation: every configuration's validation NDCG@10, the selected one, its ranks."""

    name: str
    configs: list[BaselineConfig]
    valid_ndcg: list[float]
    selected: int
    valid_ranks: np.ndarray
    test_ranks: np.ndarray

    @property
    def config(self) -> BaselineConfig:
        return self.configs[self.selected]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "budget": len(self.configs),
            "configs": [{"window": c.window, "normalise": c.normalise, "label": c.label(), "valid_ndcg@10": v}
                        for c, v in zip(self.configs, self.valid_ndcg, strict=True)],
            "selected": self.selected,
            "selected_label": self.config.label(),
        }  # fmt: skip


def tune_baseline(
    name: str,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    text_table: torch.Tensor | None = None,
    train_rows: np.ndarray | None = None,
) -> BaselineSearch:
    """Search `baseline_grid(name)` on the validation split by NDCG@10 (first configuration on ties), then rank the
    test split once, at the selected configuration. text_table: `raw_text_embeddings` (content-knn) to reuse;
    train_rows: the users whose training sequences popularity counts (a learning curve's share; default all)."""
    if name == "content-knn" and text_table is None:
        text_table = raw_text_embeddings(dataset.item_texts)
    grid = baseline_grid(name)
    valid = [config_ranks(name, config, dataset, split, "valid", text_table, train_rows) for config in grid]
    scores = [float((1.0 / np.log2(ranks + 1.0) * (ranks <= 10)).mean()) for ranks in valid]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    test = config_ranks(name, grid[best], dataset, split, "test", text_table, train_rows)
    return BaselineSearch(name, grid, scores, best, valid[best], test)
