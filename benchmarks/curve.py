"""The learning curve of issue 24.5, resumable: popularity, content-knn, SASRec-ID, pmmrec-scratch, pmmrec-transfer
and zero-shot at 5%, 10%, 25%, 50% and 100% of the target's training users (fixed validation and test users), each
trained row searched alike on validation (pmmrec.demo.curve), several seeds, paired tests per share on all users and
on new-item users (pmmrec.demo.curve_report).

Writes OUT/curve.json (rows, tests, targets, searches, timings and every row's per-user test ranks per share and
seed), OUT/curve.md and OUT/curve.png. Every run caches its result under OUT, so the same command continues an
interrupted curve. `pmmrec demo --curve` runs the same curve inside the demo.

    python benchmarks/curve.py OUT --size quick [--seeds 0 1 2] [--workers 2] [--shares 0.05 0.1 0.25 0.5 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from pmmrec.data import build_movielens, leave_one_out, load_dataset, new_target_mask
from pmmrec.demo.curve import CURVE_SHARES, CurveInputs, CurvePlan, run_curve
from pmmrec.demo.curve_report import curve_markdown, plot_curve, summarise_curve
from pmmrec.demo.rows import settings_for
from pmmrec.demo.run import target_statistics
from pmmrec.fileio import write_json


def cpu_seconds() -> dict[str, float]:
    """User + system CPU of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": own.ru_utime + own.ru_stime, "children": children.ru_utime + children.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=["quick", "demo", "large"], default="quick", help="the demo's sizes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one searches")
    parser.add_argument("--shares", type=float, nargs="+", default=list(CURVE_SHARES))
    parser.add_argument("--no-search", action="store_true", help="every row at the setting's configuration")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started, load_before = time.perf_counter(), os.getloadavg()
    source_dir, target_dir = args.out / "data" / "source", args.out / "data" / "target"
    settings = settings_for(args.size, args.seeds[0])
    if not (source_dir / "dataset.json").is_file():
        build_movielens(source_dir, domain="source", overwrite=True)
    if not (target_dir / "dataset.json").is_file():
        build_movielens(target_dir, domain="target", new_items=settings.new_items, overwrite=True)
    plan = CurvePlan(tuple(args.shares), tuple(args.seeds), not args.no_search, workers=args.workers,
                     threads=args.threads)  # fmt: skip
    inputs = CurveInputs(args.out, source_dir, target_dir, replace(settings), {}, args.device)
    raw = run_curve(inputs, plan, say=lambda message: print(f"[{time.perf_counter() - started:7.0f} s] {message}",
                                                             flush=True))  # fmt: skip
    target = load_dataset(target_dir)
    report = summarise_curve(raw, new_target_mask(leave_one_out(target.sequences), "test"))
    source = load_dataset(source_dir)
    report["target"] = target_statistics(target)
    report["source"] = {"users": source.num_users, "items": source.num_items,
                        "interactions": source.num_interactions}  # fmt: skip
    report["source_to_target_training"] = source.num_interactions / report["target"]["training_interactions"]
    report["machine"] = {"cpu_seconds": cpu_seconds(), "load_average_before": load_before,
                         "load_average_after": os.getloadavg(), "cores": os.cpu_count(),
                         "wall_seconds": time.perf_counter() - started, "command": " ".join(sys.argv)}  # fmt: skip
    title = f"Learning curve, {settings.label} sizes, seeds {', '.join(map(str, args.seeds))}"
    write_json(args.out / "curve.json", report)
    (args.out / "curve.md").write_text(curve_markdown(report, title), encoding="utf-8")
    plot_curve(report, args.out / "curve.png", title)
    print(curve_markdown(report, title))
    print(json.dumps(report["machine"], indent=1))


if __name__ == "__main__":
    main()
