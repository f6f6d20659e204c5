"""Quality table: every trained row tuned alike on validation, tested once, 3 seeds, intervals and paired tests.

For each setting (quick, demo, large: pmmrec.demo.rows.SETTINGS) and each trained row (sasrec-id, pmmrec-scratch,
pmmrec-transfer; at the quick setting also the ablations and the text + vision rows on synthetic images):

1. pre-train on the source domain, one run per seed (and per objective ablation);
2. search: the row's eight configurations (pmmrec.demo.rows.search_grid) with the search seed, the test split off;
3. select the configuration with the best validation NDCG@10, evaluate its test split once, and train it with the
   other seeds (test evaluated once at the best epoch of each);
4. rows that train nothing on the target: popularity (recency window, 7 configurations) and content-knn (history
   window x raw/normalised vectors, 14), each searched on validation and tested once, and zero-shot transfer;
5. report: per row, metrics over seeds with 95% seed x user bootstrap intervals and the search budget; for every
   claim the exact (or Monte-Carlo) sign-flip test with users as clusters, the seed x user bootstrap, the number
   of users that differ and Holm's correction within the table (pmmrec.stats); per-user test ranks.

It also runs the defaults check on the whole MovieLens-100K (`--ml100k`): `pmmrec finetune --item-tower id` and
`--text-backbone minilm` with no other option, against the best of eight tuned recipes each (selected on validation).

Every job caches its result next to its run folder, so an interrupted run continues. Jobs run in parallel worker
processes (`--workers`); `--device cuda` trains on a GPU.

    python benchmarks/quality.py --settings quick demo large --ml100k --workers 12 --device cuda --out runs/q --json q.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_jobs as jobs
from quality_ml100k import WINDOWS, ml100k_tasks
from quality_report import report

from pmmrec.demo.rows import (
    DEMO_ROWS,
    PRETRAINING_OF,
    TRAINED_ROWS,
    RowConfig,
    row_overrides,
    search_grid,
    settings_for,
)

ROWS_OF = {"quick": tuple(row for row in TRAINED_ROWS if row != "mm-scratch"), "demo": DEMO_ROWS, "large": DEMO_ROWS}


@dataclass
class Task:
    """One job; `args` builds its arguments from the results of its dependencies when it is submitted."""

    key: str
    fn: Callable[..., dict[str, Any]]
    deps: list[str]
    args: Callable[[dict[str, Any]], tuple[Any, ...]]
    priority: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


def run_tasks(
    tasks: list[Task], workers: int, threads: int, log: Callable[[str], None], deadline: float | None = None
) -> dict[str, Any]:
    """Run tasks in dependency order on a process pool; a failed task fails its dependants (logged), not the rest.

    deadline: a time.monotonic() value after which running jobs are killed and the results so far returned.
    """
    results: dict[str, Any] = {}
    failed: set[str] = set()
    pending = {task.key: task for task in tasks}
    running: dict[Future[dict[str, Any]], str] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        while pending or running:
            for key in [k for k, t in pending.items() if any(d in failed for d in t.deps)]:
                failed.add(key)
                log(f"skipped {key}: a dependency failed")
                del pending[key]
            ready = sorted((t for t in pending.values() if all(d in results for d in t.deps)), key=lambda t: -t.priority)
            for task in ready[: max(0, workers - len(running))]:
                del pending[task.key]
                running[pool.submit(task.fn, *task.args(results), **task.kwargs, threads=threads)] = task.key
            if not running:
                if pending:
                    raise RuntimeError(f"unsatisfiable tasks: {sorted(pending)[:5]}")
                break
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                log(f"deadline reached: stopping {len(running)} running and {len(pending)} pending jobs")
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                return results
            for future in done:
                key = running.pop(future)
                try:
                    results[key] = future.result()
                    log(f"done {key}")
                except Exception as exc:  # one failed run must not lose the others' results
                    failed.add(key)
                    log(f"FAILED {key}: {type(exc).__name__}: {exc}")
    return results


SETTING_BOOST = {"large": 2, "demo": 1, "quick": 0}  # long runs first, so that none is left alone at the end


def priority(kind: str, setting: str, row: str | None = None) -> int:
    """Scheduling order (higher first): data, pre-training, the main rows' searches and finals, then the rest."""
    base = {"pretrain": 6, "search": 4, "final": 5, "untrained": 3, "window": 1}[kind]
    if row is not None and row not in DEMO_ROWS and kind in ("search", "final"):
        base -= 2
    return base + SETTING_BOOST[setting]


def selected(results: dict[str, Any], setting: str, row: str) -> int:
    """Index of the row's configuration with the best validation NDCG@10 (first on ties)."""
    scores = [results[f"search:{setting}:{row}:{i}"]["valid_ndcg@10"] for i in range(len(search_grid(row)))]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def setting_tasks(
    root: str, setting: str, seeds: list[int], device: str | None, images: bool, only: list[str] | None = None
) -> list[Task]:
    """Every task of one setting (pre-training, search, finals, untrained rows); `only` limits the trained rows."""
    search_seed = seeds[0]
    rows = [row for row in ROWS_OF[setting] if (images or not row.startswith("mm")) and (not only or row in only)]
    pretrainings = sorted({PRETRAINING_OF[row] for row in rows if row in PRETRAINING_OF} | {"text"})
    if images and setting == "quick" and (not only or any(row.startswith("mm") for row in only)):
        pretrainings = sorted(set(pretrainings) | {"mm"})
    tasks: list[Task] = []
    for name in pretrainings:
        data = "data:source-img" if name.startswith("mm") else "data:source"
        for seed in seeds:
            tasks.append(Task(f"pre:{setting}:{name}:{seed}", jobs.pretrain, [data],
                              lambda r, n=name, s=seed: (root, setting, n, s, device),
                              priority=priority("pretrain", setting)))  # fmt: skip

    def components(results: dict[str, Any], seed: int) -> dict[str, dict[str, str]]:
        return {
            name: results[f"pre:{setting}:{name}:{seed}"]["components"]
            for name in pretrainings
            if f"pre:{setting}:{name}:{seed}" in results
        }

    for row in rows:
        data = "target-img" if row.startswith("mm") else "target"
        pre_deps = lambda seed, row=row: [f"pre:{setting}:{PRETRAINING_OF[row]}:{seed}"] if row in PRETRAINING_OF else []  # noqa: E731
        grid = search_grid(row)
        for index, config in enumerate(grid):

            def search_args(results: dict[str, Any], row: str = row, config: RowConfig = config, index: int = index,
                            data: str = data) -> tuple[Any, ...]:  # fmt: skip
                settings = replace(settings_for(setting, search_seed), configs={row: config})
                overrides = row_overrides(row, settings, components(results, search_seed)) | {"evaluate_test": False}
                return root, f"search/{setting}/{row}/c{index}", data, overrides, device

            tasks.append(Task(f"search:{setting}:{row}:{index}", jobs.finetune,
                              [f"data:{data}", *pre_deps(search_seed)], search_args,
                              priority=priority("search", setting, row)))  # fmt: skip
        search_keys = [f"search:{setting}:{row}:{i}" for i in range(len(grid))]
        tasks.append(Task(f"test:{setting}:{row}:{search_seed}", jobs.test_once, search_keys,
                          lambda r, row=row, data=data: (root, f"search/{setting}/{row}/c{selected(r, setting, row)}",
                                                         data, device),
                          priority=priority("final", setting, row)))  # fmt: skip
        for seed in seeds[1:]:

            def final_args(results: dict[str, Any], row: str = row, seed: int = seed, data: str = data) -> tuple[Any, ...]:
                config = search_grid(row)[selected(results, setting, row)]
                settings = replace(settings_for(setting, seed), configs={row: config})
                return root, f"final/{setting}/{row}/s{seed}", data, row_overrides(row, settings, components(results, seed)), device

            tasks.append(Task(f"final:{setting}:{row}:{seed}", jobs.finetune,
                              [*search_keys, *pre_deps(seed)], final_args,
                              priority=priority("final", setting, row)))  # fmt: skip
    if setting == "quick" and not only:  # the window-scheme study: default configuration, validation only
        for row in ("sasrec-id", "pmmrec-scratch"):
            for window in WINDOWS:

                def window_args(results: dict[str, Any], row: str = row, window: str = window) -> tuple[Any, ...]:
                    overrides = row_overrides(row, settings_for(setting, search_seed), {})
                    overrides |= {"window": window, "evaluate_test": False}
                    return root, f"window/{setting}/{row}/{window}", "target", overrides, device

                tasks.append(Task(f"window:{setting}:{row}:{window}", jobs.finetune, ["data:target"], window_args,
                                  priority=priority("window", setting)))
    # Rows that train nothing on the target. Baselines do not depend on the seed (each searches its configurations on
    # validation and ranks the test split once, pmmrec.baselines.tune_baseline); zero-shot does (its pre-training).
    for name in ("popularity", "content-knn"):
        tasks.append(Task(f"untrained:{setting}:{name}", jobs.untrained, ["data:target"],
                          lambda r, n=name: (root, setting, n, 0, None, None),
                          priority=priority("untrained", setting)))  # fmt: skip
    zero_shots = [("pmmrec-zero-shot", "text")] + ([("mm-zero-shot", "mm")] if "mm" in pretrainings else [])
    for row, name in zero_shots:
        for seed in seeds:
            tasks.append(Task(f"untrained:{setting}:{row}:{seed}", jobs.untrained, [f"pre:{setting}:{name}:{seed}"],
                              lambda r, row=row, n=name, s=seed: (root, setting, row, s,
                                                                  r[f"pre:{setting}:{n}:{s}"]["components"], device),
                              priority=priority("untrained", setting)))  # fmt: skip
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["quick"], choices=["quick", "demo", "large"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one is the search seed")
    parser.add_argument("--no-images", action="store_true", help="skip the text + vision rows (synthetic images)")
    parser.add_argument("--ml100k", action="store_true", help="also run the defaults check on the whole MovieLens-100K")
    parser.add_argument("--only-ml100k", action="store_true", help="run only the MovieLens-100K defaults check")
    parser.add_argument("--rows", nargs="+", default=None, help="only these trained rows (default: all of the setting)")
    parser.add_argument("--deadline", type=float, default=None, help="stop after this many seconds, report what finished")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    jobs.apply_smoke()
    started = time.perf_counter()
    root = str(args.out.resolve())
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    images = not args.no_images
    tasks: list[Task] = []
    settings = [] if args.only_ml100k else args.settings
    data_names = {"source", "target"} | ({"source-img", "target-img"} if images and "quick" in settings else set())
    data_names = (data_names if settings else set()) | ({"ml100k"} if args.ml100k or args.only_ml100k else set())
    for name in sorted(data_names):
        tasks.append(Task(f"data:{name}", jobs.build_data, [], lambda r, n=name: (root, n), priority=10))
    for setting in settings:
        tasks += setting_tasks(root, setting, args.seeds, args.device, images, args.rows)
    if args.ml100k or args.only_ml100k:
        tasks += ml100k_tasks(root, args.device, Task)
    log_path = args.out / "log.txt"
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f} s] {message}"
        print(line, flush=True)
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    log(f"{len(tasks)} tasks, {args.workers} workers x {threads} threads, device {args.device or 'cpu'}")
    deadline = time.monotonic() + args.deadline if args.deadline else None
    results = run_tasks(tasks, args.workers, threads, log, deadline)
    try:
        payload = report(results, settings, args.seeds, images, ml100k=args.ml100k or args.only_ml100k, root=Path(root))
    except Exception:  # the job results are cached in --out: the report can be made again from them
        import traceback

        payload = {"report_error": traceback.format_exc()}
        log(payload["report_error"])
    payload["seconds"] = time.perf_counter() - started
    payload["command"] = " ".join(sys.argv)
    payload["load_average"] = os.getloadavg()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    log(f"finished in {payload['seconds']:.0f} s")
    print(payload.get("markdown", ""))


if __name__ == "__main__":
    main()
