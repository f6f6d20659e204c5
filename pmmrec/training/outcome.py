"""What a finished training run leaves behind: its result, RUN/summary.json and RUN/test_ranks.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pmmrec.comparison import RUN_RANKS
from pmmrec.data import Dataset, LeaveOneOutSplit
from pmmrec.evaluation import format_metrics_table
from pmmrec.fileio import write_json
from pmmrec.inference import EvaluationResult
from pmmrec.model import PMMRec
from pmmrec.tasks import evaluation_document
from pmmrec.training.config import TrainConfig


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    best_epoch: int | None
    best_valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: PMMRec | None = None
    test_ranks: np.ndarray | None = None  # per-user test ranks (split order), None when the test was not evaluated
    summary: dict[str, Any] = field(default_factory=dict)  # RUN/summary.json's document


@dataclass(frozen=True)
class RunFacts:
    """How the run trained, as its summary records it (set when the trainer was built)."""

    world_size: int
    gather_negatives: bool
    objectives: list[str]
    skipped_objectives: list[str]
    softmax: str
    known_items: int
    learning_rates: dict[str, float]
    train_windows: int
    train_users: int


def best_validation(progress: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of the best epoch (empty before any validation)."""
    record = next((h for h in progress["history"] if h["epoch"] == progress["best_epoch"]), {})
    return {key: value for key, value in record.items() if "@" in key}


def run_summary(
    config: TrainConfig,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    facts: RunFacts,
    progress: dict[str, Any],
    test_metrics: dict[str, float],
    data_wait: tuple[float, float],
) -> dict[str, Any]:
    """RUN/summary.json's document. `data_wait`: seconds waiting for the DataLoader and seconds of whole steps (this
    process, this invocation)."""
    wait_s, step_s = data_wait
    return {
        "mode": config.mode,
        "dataset": dataset.name,
        "users": split.num_users,
        "items": dataset.num_items,
        "world_size": facts.world_size,
        "gather_negatives": facts.gather_negatives,
        "objectives": facts.objectives,
        "skipped_objectives": facts.skipped_objectives,
        "softmax": facts.softmax,
        "known_items": facts.known_items,
        "learning_rates": facts.learning_rates,
        "split": config.split_record(),
        "train_windows": facts.train_windows,
        "train_users": facts.train_users,
        "train_user_share": config.train_user_share,
        "passes_per_epoch": config.passes_per_epoch,
        "best_epoch": progress["best_epoch"],
        "valid": best_validation(progress),
        "test": test_metrics,
        "history": progress["history"],
        "steps": progress["global_step"],
        # Share of training-step wall time spent waiting for the DataLoader.
        "data_wait_share": wait_s / step_s if step_s > 0 else None,
        "data_wait_s": wait_s,
    }


def write_test_ranks(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    dataset_fingerprint: dict[str, Any],
    ranks: np.ndarray,
    metrics: dict[str, float],
) -> None:
    """RUN/test_ranks.json: the best model's test ranks per user, as `pmmrec evaluate --json` writes them (what
    `pmmrec compare RUN...` reads)."""
    document = evaluation_document(
        model=str(run_dir / "model"), data=str(dataset.root), split="test",
        settings={"min_length": config.min_length, "max_history": config.max_history,
                  "max_length": config.max_length, "exclude_seen": True},
        metrics=metrics, users=[dataset.user_ids[row] for row in split.user_rows], ranks=ranks,
        dataset=dataset_fingerprint,
    )  # fmt: skip
    write_json(run_dir / RUN_RANKS, document)


def write_outcome(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    split: LeaveOneOutSplit,
    dataset_fingerprint: dict[str, Any],
    summary: dict[str, Any],
    test: EvaluationResult | None,
    *,
    heading: str | None = None,
    ranks_dir: Path | None = None,
) -> None:
    """RUN/summary.json; after a test, test_ranks.json (in `ranks_dir`, default RUN: a refit's go to its run's
    folder, beside the model they rank) and the test metrics printed under `heading` (default: the best epoch's)."""
    write_json(run_dir / "summary.json", summary)
    if test is None:
        return
    write_test_ranks(ranks_dir or run_dir, config, dataset, split, dataset_fingerprint, test.ranks, test.metrics)
    heading = heading or f"test at the best epoch ({summary['best_epoch']})"
    tqdm.write(f"{heading}:\n" + format_metrics_table(test.metrics, config.ks))
