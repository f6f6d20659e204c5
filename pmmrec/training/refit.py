"""The refit (`config.refit`): once validation has chosen the epoch count, the model is trained again from the same
start on the validation targets too, for that many epochs, and its last epoch is the run's model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pmmrec.data import Dataset
from pmmrec.fileio import write_json
from pmmrec.model import PMMRec
from pmmrec.training.config import TrainConfig
from pmmrec.training.outcome import TrainResult
from pmmrec.training.progress import duration
from pmmrec.training.trainer import Trainer


class RefitTrainer(Trainer):
    """Trains `epochs` epochs on every interaction but each user's test target, with the schedule of the run it
    repeats; validates nothing (the validation targets are training data here) and keeps its last epoch: RUN/model,
    written by the job (its checkpoint is what a resume needs, so the refit keeps no best/ beside them)."""

    def __init__(
        self, model: PMMRec, dataset: Dataset, config: TrainConfig, run_dir: Path, *, epochs: int, resume: bool,
        progress: bool,
    ) -> None:  # fmt: skip
        super().__init__(
            model, dataset, config, run_dir, resume=resume, progress=progress, announced=True, refit_epochs=epochs
        )

    def _end_epoch(self, progress: dict[str, Any], epoch: int, seconds: float) -> None:
        """Nothing to validate on; the checkpoint of the last epoch holds the model (no best/ of its own)."""
        self._log({"event": "epoch", "epoch": epoch + 1, "seconds": seconds}, progress["global_step"])
        progress["history"].append({"event": "refit", "epoch": epoch + 1, "seconds": seconds})
        progress["best_epoch"] = epoch + 1
        done = epoch + 1 >= self.epochs or self._done(progress)
        if self.context.is_main:
            left = self.clock.describe(progress["global_step"])
            tqdm.write(f"refit epoch {epoch + 1}/{self.epochs}: {duration(seconds)} of training"
                       + (f"; {left}" if left and not done else ""))  # fmt: skip
        progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
        if self.config.save_checkpoints:
            self._save_last(progress)

    def _chosen_model(self, progress: dict[str, Any]) -> PMMRec:
        """The model after the last epoch, as trained (or as restored from its checkpoint by a resume), in eval mode
        as a model read from a folder is."""
        return self.model.eval()


def refit(
    result: TrainResult, trainer: Trainer, fresh_model: Callable[[], PMMRec], resume: bool
) -> tuple[TrainResult, Trainer]:
    """The model (`fresh_model()`: the run's start again, same seed) trained in RUN/refit (its own checkpoints: it
    resumes there) for the epochs validation chose; RUN/summary.json then holds its test beside the chosen run's
    validation (RUN/test_ranks.json, its ranks, it writes itself). Nothing to refit when no epoch was validated (a
    run stopped by --max-steps inside its first epoch)."""
    if result.best_epoch is None:
        return result, trainer
    out = trainer.run_dir
    refit_dir = out / "refit"
    refitter = RefitTrainer(
        fresh_model(), trainer.dataset, trainer.config, refit_dir, epochs=result.best_epoch,
        resume=resume and os.path.lexists(refit_dir / "config.yaml"), progress=trainer.progress,
    )  # fmt: skip
    refitter.clock.validation_seconds = trainer.clock.validation_seconds  # the test's time, as the run measured it
    refitted = refitter.run()
    summary = {
        **result.summary,
        "test": refitted.test,
        "refit": {"epochs": result.best_epoch, "folder": "refit", "train_windows": len(refitter.train_set)},
    }
    if refitter.context.is_main:
        write_json(out / "summary.json", summary)  # RUN/test_ranks.json: the refit wrote it
    chosen = TrainResult(
        run_dir=out, best_epoch=result.best_epoch, best_valid=result.best_valid, test=refitted.test,
        history=result.history, model=refitted.model, test_ranks=refitted.test_ranks, summary=summary,
    )  # fmt: skip
    return chosen, refitter
