"""A training checkpoint of the default text run (the CPU recipe on a CPU: MiniLM frozen, word pieces trained):
every weight (as before frozen.json) against the trained weights only (frozen.json for the rest), side by side.

Builds the run's training module as `pmmrec finetune --data DATA` does (its defaults, `Trainer`), takes one step
(so the optimiser holds its moments, as in every checkpoint of a run), then alternates
the two ways `--repeats` times: `save_checkpoint` (atomic, fsynced) and `load_checkpoint` (a resume's read, the
frozen weights checked by their sha256). Prints the files' sizes, median seconds and ratios, and the one-off cost
of fingerprinting the frozen weights (`frozen_parameters`, once when a run starts).

    python benchmarks/checkpoint.py --data DATA [--repeats N] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _measure import write_figures

from pmmrec.data import load_dataset
from pmmrec.training import run_dir as ckpt
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.jobs import build_model
from pmmrec.training.trainer import Trainer

PROGRESS = {"epoch": 1, "step_in_epoch": 0, "global_step": 1, "best": None, "best_epoch": None, "stale_epochs": 0,
            "history": []}  # fmt: skip


def _folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir()) / 1e6


def measure(data: str, repeats: int) -> dict[str, Any]:
    config = load_train_config(finetune_defaults(), overrides={"device": "cpu"})
    dataset = load_dataset(data)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        model = build_model(config.model, dataset, config.max_length, config.seed)
        trainer = Trainer(model, dataset, config, Path(tmp) / "run", progress=False)
        if trainer.reads_text_table:  # as the run's first epoch does: one step, so the optimiser has its state
            trainer._start_stale_layers()
        trainer._step(next(iter(trainer._loader(0, 0))), 0)
        state = {name: value.state_dict() for name, value in trainer._stateful().items()}
        started = time.perf_counter()
        frozen = ckpt.frozen_parameters(trainer.module)
        fingerprint_s = time.perf_counter() - started
        ways = {"every weight": None, "trained weights + frozen.json": frozen}
        seconds: dict[str, dict[str, list[float]]] = {way: {"save": [], "load": []} for way in ways}
        sizes: dict[str, float] = {}
        for _ in range(repeats):
            for way, record in ways.items():
                folder = Path(tmp) / way.replace(" ", "-") / "last"
                started = time.perf_counter()
                ckpt.save_checkpoint(folder, trainer.module, state, PROGRESS, record)
                seconds[way]["save"].append(time.perf_counter() - started)
                started = time.perf_counter()
                ckpt.load_checkpoint(folder, trainer.module, frozen=record)
                seconds[way]["load"].append(time.perf_counter() - started)
                sizes[way] = _folder_mb(folder)
    rows = {
        way: {"mb": sizes[way], **{f"{op}_s": statistics.median(times) for op, times in ops.items()}}
        for way, ops in seconds.items()
    }
    full, slim = rows["every weight"], rows["trained weights + frozen.json"]
    return {
        "data": data, "threads": torch.get_num_threads(), "repeats": repeats, "load_average": os.getloadavg(),
        "frozen_parameters": len(frozen["names"]) if frozen else 0, "fingerprint_s": fingerprint_s, "rows": rows,
        "size_ratio": full["mb"] / slim["mb"], "save_speedup": full["save_s"] / slim["save_s"],
        "load_speedup": full["load_s"] / slim["load_s"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset folder (pmmrec data movielens --domain all)")
    parser.add_argument("--repeats", type=int, default=7, help="alternations of the two ways (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = measure(args.data, args.repeats)
    print(f"{figures['data']}: {figures['threads']} threads, load average {figures['load_average'][0]:.2f}, "
          f"median of {figures['repeats']}")  # fmt: skip
    print(f"{'checkpoint':32} {'MB':>8} {'save s':>8} {'load s':>8}")
    for way, row in figures["rows"].items():
        print(f"{way:32} {row['mb']:8.1f} {row['save_s']:8.3f} {row['load_s']:8.3f}")
    print(f"smaller {figures['size_ratio']:.2f}x, saved {figures['save_speedup']:.2f}x and loaded "
          f"{figures['load_speedup']:.2f}x as fast; fingerprint of the {figures['frozen_parameters']} frozen "
          f"parameters (once when a run starts) {figures['fingerprint_s']:.3f} s")  # fmt: skip
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
