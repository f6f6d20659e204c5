"""The CPU recipe's training step with a frozen text backbone: per token against the table of mean states (issue 28.1).

The CPU recipe (`--recipe cpu`: MiniLM frozen, word-piece embeddings trained, d = 128) trains the projection of every
token of every distinct item of a batch, then takes the text-only tower's mean. The projection is affine, so the mean
of the projected tokens is the projection of the mean token state: the steps can read each item's mean MiniLM state
from a table (`reads_text_table`, the `tower_update_every` table that a frozen backbone never makes stale) and
project it once per item. Two Trainers of `pmmrec finetune --data ML --device cpu` with the defaults (the CPU recipe),
built from the same seed (same initial weights), step through the same batches of the first epoch in turn, one step
each per batch (forward, backward, AdamW), so load from other processes falls on both alike: `tokens` (the per-token
path, the table switched off) and `table` (the default). Reported: median ms per step each and their ratio, the
loss of each one's first step (equal up to float32 summation order), and the median ms to collate a batch with its
items' token rows (what the per-token path needs) and without (what the table path needs).

    python benchmarks/frozen_text_step.py --data ML --steps 40 --threads 2 [--json PATH]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _measure import finish_step_benchmark, step_arguments, step_rows

from pmmrec.data import load_dataset
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.jobs import build_model
from pmmrec.training.trainer import Trainer

PATHS = ("tokens", "table")


def trainer_for(data: Path, table: bool, folder: Path) -> Trainer:
    """A Trainer of the default CPU text run; `table`: its steps read the table of mean states."""
    config = load_train_config(finetune_defaults(), None, {"device": "cpu"})
    assert config.recipe == "cpu", config.recipe
    dataset = load_dataset(data)
    trainer = Trainer(build_model(config.model, dataset, config.max_length, config.seed), dataset, config, folder,
                      progress=False)  # fmt: skip
    assert trainer.reads_text_table, "the default CPU text run no longer reads a table"
    trainer.model.train()
    if table:
        trainer._start_stale_layers()
    return trainer


def main(argv: list[str] | None = None) -> int:
    args = step_arguments(__doc__.split("\n\n")[0], argv, "path")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {name: trainer_for(args.data, name == "table", Path(scratch) / name) for name in PATHS}
        tokens = trainers["tokens"]
        tokens.train_set.set_epoch(0)
        samples_per_batch = [list(batch) for batch in torch.utils.data.BatchSampler(
            range(len(tokens.train_set)), tokens.config.batch_size, drop_last=False)][: args.steps]  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in PATHS}
        collate: dict[str, list[float]] = {"with token rows": [], "without": []}
        first_loss: dict[str, float] = {}
        for index, indices in enumerate(samples_per_batch):
            samples = [tokens.train_set[i] for i in indices]
            started = time.perf_counter()
            batch = tokens.collator(samples)
            collate["with token rows"].append(time.perf_counter() - started)
            started = time.perf_counter()
            tokens.collator.sequences_only(samples)
            collate["without"].append(time.perf_counter() - started)
            for name in PATHS if index % 2 == 0 else tuple(reversed(PATHS)):
                torch.manual_seed(index)  # the same dropout masks for both paths
                started = time.perf_counter()
                values = trainers[name]._step(batch, index)
                times[name].append(time.perf_counter() - started)
                first_loss.setdefault(name, values["loss"])
    collate_ms = {name: round(statistics.median(values) * 1e3, 2) for name, values in collate.items()}
    rows = step_rows(times, first_loss, base="tokens", label="path")
    print(f"collate a batch: with token rows {collate_ms['with token rows']} ms, without {collate_ms['without']} ms")
    finish_step_benchmark(args, load_before, {"paths": rows, "collate_ms": collate_ms, })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
