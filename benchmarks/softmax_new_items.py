"""Validation only: the in-batch against the full softmax for the demo's content rows, on all users and on the users
whose validation target is a new item (never in a training sequence).

It reuses a finished `pmmrec demo` folder: its target data, its pre-training (the transferred components) and its
fine-tuned rows, which were trained with the full softmax their search selected. Each content row is trained again
with the in-batch softmax, everything else unchanged, and both models are ranked on the validation split.

    python benchmarks/softmax_new_items.py DEMO_FOLDER OUT_FOLDER
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pmmrec import api
from pmmrec.data import leave_one_out, load_dataset, new_target_mask
from pmmrec.demo.rows import row_overrides, settings_for
from pmmrec.stats import compare, per_user_metric
from pmmrec.training.jobs import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="a finished `pmmrec demo` output folder (default settings)")
    parser.add_argument("out", type=Path, help="folder for the in-batch runs and the results")
    args = parser.parse_args()
    target = args.demo / "data" / "target"
    dataset = load_dataset(target)
    new = new_target_mask(leave_one_out(dataset.sequences), "valid")
    parts = {slot: str(args.demo / "runs" / "pretrain" / "components" / slot) for slot in ("text", "fusion", "user")}
    settings = settings_for("demo", 42)
    results = {}
    for row in ("pmmrec-transfer", "pmmrec-scratch"):
        in_batch = replace(settings.config_of(row), softmax="in_batch")
        run = args.out / f"{row}-in_batch"
        started = time.perf_counter()
        if not (run / "model").is_dir():
            overrides = row_overrides(row, replace(settings, configs={row: in_batch}), {"text": parts})
            train("finetune", target, run, overrides=overrides | {"evaluate_test": False}, progress=False)
        seconds = time.perf_counter() - started
        values = {}
        for name, model in (("full", args.demo / "runs" / row / "model"), ("in_batch", run / "model")):
            report = args.out / f"{row}-{name}-valid.json"
            api.evaluate(model, target, split="valid", ks=(10,), out=report, progress=False)
            values[name] = per_user_metric(np.array(json.loads(report.read_text())["ranks"]), "ndcg", 10)
        results[row] = {
            "in_batch_seconds": seconds,
            "all": compare("full", values["full"], "in_batch", values["in_batch"]).as_dict(),
            "new": compare("full", values["full"][new], "in_batch", values["in_batch"][new]).as_dict(),
        }
        print(row, json.dumps(results[row], indent=1), flush=True)
    (args.out / "softmax_new_items.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
