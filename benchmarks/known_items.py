"""Issue 24: what never-trained items as negatives cost. pmmrec-scratch at the quick sizes, trained three ways on
the demo's target domain: the full softmax over the items known at training time (the default), the full softmax
over the whole catalogue (the new items listed as `known_items`: what every full-softmax run did before issue 24),
and the in-batch softmax. Test NDCG@10 on warm users and on users whose test target is a new item, per seed, and
the paired tests of pmmrec.stats (seeds x users, Holm over the four comparisons). Finished runs are reused.

    python benchmarks/known_items.py OUT_FOLDER [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pmmrec import api
from pmmrec.data import build_movielens, leave_one_out, load_dataset, new_target_mask
from pmmrec.demo.rows import row_overrides, settings_for
from pmmrec.stats import compare, per_user_metric, with_holm
from pmmrec.training.jobs import train

ROW = "pmmrec-scratch"


def variants(item_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Each way of training: (softmax, known_items) on top of the row's quick configuration."""
    return {
        "full, known items": ("full", []),
        "full, whole catalogue": ("full", item_ids),
        "in-batch": ("in_batch", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = args.out / "data" / "target"
    if not (target / "dataset.json").is_file():
        build_movielens(target, domain="target", new_items=0.2, overwrite=True)
    dataset = load_dataset(target)
    split = leave_one_out(dataset.sequences)
    new = new_target_mask(split, "test")
    values: dict[str, list[np.ndarray]] = {}
    report: dict[str, object] = {"seeds": args.seeds, "new_item_users": int(new.sum()), "runs": {}}
    for name, (softmax, known) in variants(dataset.item_ids).items():
        for seed in args.seeds:
            settings = settings_for("quick", seed)
            config = replace(settings.config_of(ROW), softmax=softmax)
            overrides = row_overrides(ROW, replace(settings, configs={ROW: config}), {}) | {"known_items": known}
            run = args.out / "runs" / f"{name.replace(', ', '-').replace(' ', '-')}-s{seed}"
            started = time.perf_counter()
            if not (run / "summary.json").is_file():  # a finished run is reused (the script resumes)
                train("finetune", target, run, overrides=overrides | {"save_checkpoints": False}, progress=False)
            seconds = time.perf_counter() - started
            ranks = api.evaluate(run / "model", target, split="test", ks=(10,), out=run / "test.json", progress=False)
            ndcg = per_user_metric(json.loads((run / "test.json").read_text())["ranks"], "ndcg", 10)
            values.setdefault(name, []).append(ndcg)
            summary = json.loads((run / "summary.json").read_text())
            report["runs"][f"{name} s{seed}"] = {  # type: ignore[index]
                "warm": float(ndcg[~new].mean()), "new": float(ndcg[new].mean()), "all": float(ndcg.mean()),
                "test_ndcg@10": ranks["ndcg@10"], "valid_ndcg@10": summary["valid"].get("ndcg@10"),
                "seconds": seconds,
            }  # fmt: skip
            print(name, seed, report["runs"][f"{name} s{seed}"], flush=True)  # type: ignore[index]
    default = values["full, known items"]
    found, labels = [], []
    for other in ("full, whole catalogue", "in-batch"):
        for subset, mask in (("warm", ~new), ("new", new)):
            found.append(
                compare("full, known items", [v[mask] for v in default], other, [v[mask] for v in values[other]])
            )
            labels.append(f"known vs {other}, {subset}")
    tests = {label: c.as_dict() for label, c in zip(labels, with_holm(found), strict=True)}  # Holm over the table
    report["comparisons"] = tests
    report["means"] = {
        name: {"warm": float(np.mean([v[~new].mean() for v in runs])), "new": float(np.mean([v[new].mean() for v in runs]))}
        for name, runs in values.items()
    }  # fmt: skip
    (args.out / "known_items.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"means": report["means"], "comparisons": tests}, indent=1))


if __name__ == "__main__":
    main()
