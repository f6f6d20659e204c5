"""Text + vision against text only (issue 24.6), at the quick setting, on SYNTHETIC pictures.

Two data variants of the MovieLens transfer domains (`pmmrec data movielens`), each with and without synthetic
pictures (drawn from title and genres; no real image is involved, and these results say nothing about real images):

- `synthetic`: the default item text (title, year and genres): the pictures carry nothing the text lacks, so text +
  vision should be at least as good as text only;
- `no-genres`: `--item-text title-year`: the text omits the genres while the pictures keep their genre colours, so
  the vision path has something to add.

For each variant, the rows of benchmarks/quality.py: pmmrec-transfer (text + user encoder pre-trained on the source)
and mm-transfer (text, vision, fusion and user encoder pre-trained on the source with pictures), each searched on
validation (benchmarks/quality.py's eight configurations for the text row; `--mm-configs` of them for the text +
vision row, a handicap to the row the claims are about), tested once, with every seed; and zero-shot transfer of
both pre-trainings. Per variant one table of paired tests (Holm over its two): mm-transfer vs pmmrec-transfer and
mm-zero-shot vs pmmrec-zero-shot (pmmrec.stats: sign-flip with users as clusters, seed x user bootstrap).

    python benchmarks/multimodal.py --out runs/mm --seeds 0 1 2 --workers 3 --json mm.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality
import quality_jobs as jobs

from pmmrec.demo import rows as demo_rows

VARIANTS = {"synthetic": "title-year-genres", "no-genres": "title-year"}
ROWS = ("pmmrec-transfer", "mm-transfer")
PAIRS = (("mm-transfer", "pmmrec-transfer", "all"), ("mm-zero-shot", "pmmrec-zero-shot", "all"))
# Issue 24.6's target per variant: text + vision at least text-only (the difference's 95% interval reaches 0 or
# above, and no significant loss), or better than text-only (significant, Holm within the variant's table).
TARGETS = {"synthetic": "at least", "no-genres": "better"}
# The text + vision row's candidates: the region of the shared grid where both rows' optima lay before
# (docs/benchmarks.md, quick setting: text full/3e-3, text + vision in-batch/1e-3).
MM_CANDIDATES = (("in_batch", 1e-3), ("full", 1e-3), ("in_batch", 3e-3), ("full", 3e-3))


def build_data(root: str, name: str, item_text: str, threads: int = 1) -> dict[str, Any]:
    """One dataset folder of a variant: source / target (new items 0.2), with or without synthetic pictures."""
    jobs._prepare(threads)
    from pmmrec.data import build_movielens

    folder = Path(root) / "data" / name
    if not (folder / "dataset.json").is_file():
        domain, images = name.split("-")[0], "synthetic" if name.endswith("-img") else "none"
        build_movielens(folder, domain=domain, images=images, new_items=0.2 if domain == "target" else 0.0,
                        item_text=item_text, overwrite=True)  # fmt: skip
    return {"path": str(folder)}


def mm_grid(count: int) -> Any:
    """search_grid with the text + vision row limited to the first `count` of MM_CANDIDATES."""
    full_grid = demo_rows.search_grid

    def grid(row: str) -> list[demo_rows.RowConfig]:
        if not row.startswith("mm"):
            return full_grid(row)
        # In MM_CANDIDATES' order, so that a run's folder cN names the same configuration at any `count` (the
        # job cache is keyed by folder: a resumed run with more candidates reuses the first ones).
        configs = full_grid(row)
        return [next(c for c in configs if (c.softmax, c.pretrained_lr) == wanted) for wanted in MM_CANDIDATES[:count]]

    return grid


def shared_prefixes(job: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run quality_jobs' `job` with every frozen-prefix store on disk (pmmrec.prefix_cache's path for catalogues
    over its memory budget: fp16, named by the prefix's key under $PMMREC_CACHE/prefix), so that the runs of one
    dataset share it. In memory (the default at these sizes) each run computes it again: for the pictures, the
    frozen EfficientNet bottom, about 0.14 CPU-seconds per item on one thread."""
    import inspect

    from pmmrec.prefix_cache import FrozenPrefixCache

    build = FrozenPrefixCache.for_model.__func__  # type: ignore[attr-defined]
    names = [p.name for p in inspect.signature(build).parameters.values() if p.default is not inspect.Parameter.empty]
    defaults = list(build.__defaults__)
    defaults[names.index("memory_budget")] = 0
    build.__defaults__ = tuple(defaults)
    return getattr(jobs, job)(*args, **kwargs)  # type: ignore[no-any-return]


def first_image_runs(seeds: list[int]) -> dict[str, str]:
    """Image runs that wait for another (run -> the one it waits for): every run of a dataset's pictures computes
    the same frozen EfficientNet prefix (pmmrec.prefix_cache: keyed by weights and image bytes, which both variants
    share), several CPU minutes; run first alone, one run stores it on disk and the others reuse it."""
    waits = {f"pre:quick:mm:{seed}": f"pre:quick:mm:{seeds[0]}" for seed in seeds[1:]}
    return waits | {f"search:quick:mm-transfer:{i}": "search:quick:mm-transfer:0" for i in range(1, len(MM_CANDIDATES))}


def variant_tasks(
    out: Path, variant: str, seeds: list[int], device: str | None, first: str | None = None, boost: int = 0
) -> list[quality.Task]:
    """Every task of one variant, keys prefixed with the variant (the variants share one worker pool).

    first: the variant run before this one (its first image runs compute the image prefixes this one reuses);
    boost: added to every priority (the first variant's jobs go first, so that one variant is complete early).
    """
    root = str((out / variant).resolve())
    tasks = [quality.Task(f"data:{name}", build_data, [], lambda r, n=name: (root, n, VARIANTS[variant]), priority=10)
             for name in ("source", "target", "source-img", "target-img")]  # fmt: skip
    tasks += [task for task in quality.setting_tasks(root, "quick", seeds, device, True, list(ROWS))
              if task.key.split(":")[-1] not in ("popularity", "content-knn")]  # fmt: skip
    waits = first_image_runs(seeds)
    prefixed = []
    for task in tasks:

        def args(results: dict[str, Any], task: quality.Task = task) -> tuple[Any, ...]:
            return task.args({key.split("/", 1)[1]: v for key, v in results.items() if key.startswith(f"{variant}/")})

        deps = [f"{variant}/{dep}" for dep in task.deps]
        if task.key in waits:
            deps.append(f"{variant}/{waits[task.key]}")
        elif first is not None and task.key in waits.values():
            deps.append(f"{first}/{task.key}")
        fn = task.fn if task.fn is build_data else functools.partial(shared_prefixes, task.fn.__name__)
        prefixed.append(quality.Task(f"{variant}/{task.key}", fn, deps, args, task.priority + boost, task.kwargs))
    return prefixed


def target_verdict(variant: str, test: dict[str, Any]) -> str:
    """'met' or 'NOT MET' with the reason, for one paired test of a variant against its target."""
    worse = test["significant"] and test["difference"] < 0
    if TARGETS[variant] == "at least":
        if test["ci_high"] >= 0 and not worse:
            return "met: text + vision within the interval of text-only or above"
        return "NOT MET: text + vision significantly worse" if worse else "NOT MET: the interval lies below 0"
    if test["significant"] and test["difference"] > 0:
        return "met: text + vision significantly better"
    return "NOT MET: " + ("text + vision significantly worse" if worse else "no significant difference")


def variant_report(results: dict[str, Any], variant: str, seeds: list[int], root: Path) -> dict[str, Any]:
    """Rows (3 seeds, intervals), the two paired tests with Holm over them, the searches, pre-training figures."""
    import numpy as np

    from pmmrec.data import leave_one_out, load_dataset, new_target_mask
    from pmmrec.demo.report import comparisons, results_markdown, row_summary

    own = {key.split("/", 1)[1]: value for key, value in results.items() if key.startswith(f"{variant}/")}
    new_users = new_target_mask(leave_one_out(load_dataset(root / "data" / "target").sequences), "test")
    ranks: dict[str, list[Any]] = {}
    searches: dict[str, Any] = {}
    budgets: dict[str, str] = {}
    for row in ROWS:
        grid = quality.search_grid(row)
        runs = [own.get(f"search:quick:{row}:{i}") for i in range(len(grid))]
        finals = [own.get(f"test:quick:{row}:{seeds[0]}")] + [own.get(f"final:quick:{row}:{s}") for s in seeds[1:]]
        if any(run is None for run in runs + finals):
            continue
        best = quality.selected(own, "quick", row)
        searches[row] = {"selected": grid[best].label(),
                         "configs": [{**asdict(c), "valid_ndcg@10": r["valid_ndcg@10"], "curve": r["curve"]}
                                     for c, r in zip(grid, runs, strict=True)],  # type: ignore[index]
                         "seeds": [{"valid_ndcg@10": f["valid_ndcg@10"], "best_epoch": f["best_epoch"],
                                    "curve": f["curve"], "seconds": f["seconds"]} for f in finals]}  # type: ignore[index]  # fmt: skip
        ranks[row] = [np.asarray(f["test_ranks"]) for f in finals]  # type: ignore[index]
        budgets[row] = f"{len(grid)} on validation: {grid[best].label()}"
    for row in ("pmmrec-zero-shot", "mm-zero-shot"):
        runs = [own.get(f"untrained:quick:{row}:{seed}") for seed in seeds]
        if all(run is not None for run in runs):
            ranks[row] = [np.asarray(run["test_ranks"]) for run in runs]  # type: ignore[index]
            budgets[row] = "none (nothing trained on the target)"
    rows = [row_summary(name, ranks[name], new_users, budgets[name]) for name in
            ("pmmrec-transfer", "mm-transfer", "pmmrec-zero-shot", "mm-zero-shot") if name in ranks]  # fmt: skip
    tests = comparisons(ranks, new_users, PAIRS)
    pretraining = {key: {k: v for k, v in value.items() if k != "components"}
                   for key, value in own.items() if key.startswith("pre:quick:")}  # fmt: skip
    for test in tests:
        test["target"] = f"{TARGETS[variant]} text-only: " + target_verdict(variant, test)
    notes = [f"variant {variant}: item text {VARIANTS[variant]}; pictures SYNTHETIC (title and genres drawn by pmmrec), "
             f"no evidence about real images; seeds {seeds} (search seed {seeds[0]})"]  # fmt: skip
    notes += [f"target, {test['a']} vs {test['b']}: {test['target']}" for test in tests]
    return {"rows": rows, "comparisons": tests, "searches": searches, "pretraining": pretraining,
            "test_ranks": {name: [r.tolist() for r in values] for name, values in ranks.items()},
            "markdown": results_markdown(rows, tests, notes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one is the search seed")
    parser.add_argument("--mm-configs", type=int, default=2, choices=range(1, len(MM_CANDIDATES) + 1),
                        help="configurations searched for the text + vision row (of MM_CANDIDATES)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/multimodal"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PMMREC_CACHE", str((args.out / "cache").resolve()))  # the shared prefixes (workers inherit)
    jobs.apply_smoke()
    quality.search_grid = mm_grid(args.mm_configs)  # read by setting_tasks and selected (this process only)
    started, cpu_started = time.perf_counter(), time.process_time()
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for index, variant in enumerate(args.variants):  # the first variant first; the second reuses its image prefixes
        first = args.variants[0] if index else None
        boost = 20 * (len(args.variants) - 1 - index)
        tasks += variant_tasks(args.out, variant, args.seeds, args.device, first, boost)

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f} s] {message}"
        print(line, flush=True)
        with (args.out / "log.txt").open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    log(f"{len(tasks)} tasks, {args.workers} workers x {args.threads} threads, load {os.getloadavg()}")
    results = quality.run_tasks(tasks, args.workers, args.threads, log)
    payload: dict[str, Any] = {"seeds": args.seeds, "mm_configs": args.mm_configs, "variants": {}}
    for variant in args.variants:
        payload["variants"][variant] = variant_report(results, variant, args.seeds, (args.out / variant).resolve())
    children = os.times()
    payload |= {"seconds": time.perf_counter() - started, "command": " ".join(sys.argv),
                "cpu_seconds_children": children.children_user + children.children_system,
                "cpu_seconds_main": time.process_time() - cpu_started, "load_average_end": os.getloadavg()}  # fmt: skip
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    log(f"finished in {payload['seconds']:.0f} s")
    for variant in args.variants:
        print(f"## {variant}\n\n{payload['variants'][variant]['markdown']}\n")


if __name__ == "__main__":
    main()
