"""The learning curve (issue 24.5): each model's test NDCG@10 as the share of the target's training users grows.

- **Shares.** At each share (CURVE_SHARES: 5%, 10%, 25%, 50%, 100%) only the training sequences of a seeded sample
  of the target's users train (`pmmrec.data.user_share_rows`, sampling seed 0 for every model and training seed, so
  the samples are nested: 5% inside 10% and so on). Every user keeps their validation and test target and their
  whole history as the model's input at evaluation: every share is evaluated on the same users, and a user left
  out of training is one whose behaviour the model reads but never trained on.
- **Tuned alike.** Every trained row (sasrec-id, pmmrec-scratch, pmmrec-transfer) gets the same search at every
  share: `curve_grid` (three learning-rate settings; the epoch is picked by validation), trained with the first
  seed with the test split off, selected by validation NDCG@10, its test split evaluated once, then trained with
  the other seeds at the selected configuration. A share's epoch passes over its training windows as often as
  makes it about as long as an epoch at 100% (`share_passes`), so every share may take as many optimisation steps,
  with the same epoch cap, patience and validations, as a run on all users.
  popularity (counts of the share's training sequences) and content-knn are searched on validation at every share
  (`tune_baseline`); content-knn and zero-shot train nothing on the target, so they are the same at every share.
- **Statistics.** Per share, the paired tests of `pmmrec.stats` on all users and on new-item users, Holm within the
  share's table (pmmrec.demo.curve_report).

Every job (pmmrec.demo.curve_jobs) caches its result as JSON in its folder, so an interrupted curve continues where
it stopped (benchmarks/curve.py); jobs can run in worker processes (`run_calls`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.demo.curve_jobs import finetune_job, pretrain_job, test_job, tidy, zero_shot_job
from pmmrec.demo.rows import DEMO_ROWS, FRESH_USER_ROWS, DemoSettings, RowConfig, pretrain_overrides, row_overrides

CURVE_SHARES: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 1.0)
SAMPLE_SEED = 0  # the users of each share: one sample for every model and seed (nested across shares)
# The search of every trained row at every share: three learning-rate settings, full softmax over the known items.
FRESH_RATES: tuple[tuple[float, float], ...] = ((1e-3, 1e-4), (3e-3, 3e-4), (1e-2, 1e-3))
TRANSFER_RATES: tuple[float, ...] = (3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class CurvePlan:
    """What a learning curve runs: shares, training seeds (the first one searches), whether to search."""

    shares: tuple[float, ...] = CURVE_SHARES
    seeds: tuple[int, ...] = (0, 1, 2)
    search: bool = True  # False: every row at the setting's configuration (the default demo)
    sample_seed: int = SAMPLE_SEED
    workers: int = 1  # worker processes (1: everything in this process)
    threads: int | None = None  # torch threads per worker (default: cores / workers; unchanged with one worker)


def curve_grid(row: str, settings: DemoSettings) -> list[RowConfig]:
    """The configurations searched for a row at each share (three each): rows with a fresh user encoder vary the
    (fresh, pretrained) rates over FRESH_RATES, the transferred row its pretrained rate over TRANSFER_RATES; the
    softmax is full (over the items known at training time) and the dropout the setting's."""
    base = settings.config_of(row)
    if row in FRESH_USER_ROWS:
        return [RowConfig("full", fresh, pretrained, base.dropout) for fresh, pretrained in FRESH_RATES]
    return [RowConfig("full", 1e-3, pretrained, base.dropout) for pretrained in TRANSFER_RATES]


def share_label(share: float) -> str:
    """'p05', 'p10', ..., 'p100': a share's folder name."""
    return f"p{round(share * 100):02d}"


def training_windows(train_sequences: Sequence[np.ndarray], settings: DemoSettings) -> int:
    """Training windows of one pass over these sequences (tiles windows of the setting's length)."""
    from pmmrec.data import TrainSequences

    return len(TrainSequences(train_sequences, settings.max_length))


def share_passes(full_windows: int, share_windows: int) -> int:
    """Passes per epoch of a share's fine-tuning: round(windows at 100% / windows at the share), at least 1, so an
    epoch of the share is about as long as an epoch at 100% (same cap, patience and validations)."""
    return max(1, round(full_windows / max(1, share_windows)))


Call = tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]


def run_calls(calls: list[Call], plan: CurvePlan, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run independent jobs: in this process (one worker) or on a pool of spawned workers; results in order."""
    if not calls:
        return []
    if plan.workers <= 1:
        results = []
        for index, (fn, args) in enumerate(calls, start=1):
            results.append(fn(*args, plan.threads))
            say(f"   {index}/{len(calls)} {Path(str(args[0])).name if args else fn.__name__} done")
        return results
    import multiprocessing

    threads = plan.threads or max(1, (os.cpu_count() or 1) // plan.workers)
    with ProcessPoolExecutor(plan.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *args, threads) for fn, args in calls]
        results = []
        for index, future in enumerate(futures, start=1):
            results.append(future.result())
            say(f"   {index}/{len(calls)} jobs done")
        return results


# ---- the curve -------------------------------------------------------------------------------------------------


@dataclass
class CurveInputs:
    """Where a curve reads and writes, and what it starts from."""

    out: Path  # folder of the curve's runs (results cached there)
    source_dir: Path
    target_dir: Path
    settings: DemoSettings  # sizes; its configs are the rows' configuration when the plan does not search
    components: dict[int, dict[str, str]]  # seed -> slot -> reference, for seeds already pre-trained
    device: str | None = None


def pretrained_components(inputs: CurveInputs, plan: CurvePlan, say: Callable[[str], None]) -> dict[int, dict[str, str]]:
    """Every seed's pre-trained components: the given ones, the others pre-trained here (in parallel)."""
    missing = [seed for seed in plan.seeds if seed not in inputs.components]
    calls: list[Call] = []
    for seed in missing:
        overrides = pretrain_overrides("text", inputs.settings.with_seed(seed)) | {"device": inputs.device}
        calls.append((pretrain_job, (str(inputs.out / "pre" / f"s{seed}"), str(inputs.source_dir), overrides)))
    if calls:
        say(f"   pre-training on the source domain for seed(s) {', '.join(map(str, missing))}")
    found = dict(inputs.components)
    for seed, result in zip(missing, run_calls(calls, plan, say), strict=True):
        found[seed] = result["components"]
    return found


def _finetune_overrides(
    inputs: CurveInputs, row: str, config: RowConfig, seed: int, share: float, passes: int,
    components: dict[str, str], plan: CurvePlan, evaluate_test: bool,
) -> dict[str, Any]:  # fmt: skip
    settings = replace(inputs.settings.with_seed(seed), configs={row: config})
    return row_overrides(row, settings, {"text": components}) | {
        "passes_per_epoch": passes, "train_user_share": share,
        "train_user_seed": plan.sample_seed, "evaluate_test": evaluate_test, "device": inputs.device,
    }  # fmt: skip


def _selected(results: Sequence[dict[str, Any]]) -> int:
    scores = [r["valid_ndcg@10"] if r["valid_ndcg@10"] is not None else -1.0 for r in results]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def trained_rows(
    inputs: CurveInputs, plan: CurvePlan, components: dict[int, dict[str, str]], passes: dict[float, int],
    say: Callable[[str], None],
) -> dict[float, dict[str, dict[str, Any]]]:  # fmt: skip
    """Per share and trained row: the searched configurations' validation scores, the selected one, and the test
    ranks of every seed (search seed: the selected search run's test, evaluated once; others: retrained)."""
    first, others = plan.seeds[0], plan.seeds[1:]
    grids = {row: curve_grid(row, inputs.settings) if plan.search else [inputs.settings.config_of(row)] for row in DEMO_ROWS}

    def folder(share: float, row: str, index: int, seed: int) -> str:
        return str(inputs.out / "runs" / share_label(share) / row / f"c{index}-s{seed}")

    keys = [(share, row, index) for share in plan.shares for row in DEMO_ROWS for index in range(len(grids[row]))]
    say(f"   {len(keys)} first-seed runs ({'searching ' + str(len(grids['sasrec-id'])) + ' configurations per row' if plan.search else 'one configuration per row'})")
    calls: list[Call] = [
        (finetune_job, (folder(s, row, i, first), str(inputs.target_dir),
                        _finetune_overrides(inputs, row, grids[row][i], first, s, passes[s], components[first], plan,
                                            evaluate_test=not plan.search)))
        for s, row, i in keys
    ]  # fmt: skip
    first_results = dict(zip(keys, run_calls(calls, plan, say), strict=True))
    table: dict[float, dict[str, dict[str, Any]]] = {share: {} for share in plan.shares}
    calls, tags = [], []
    for share in plan.shares:
        for row in DEMO_ROWS:
            results = [first_results[(share, row, i)] for i in range(len(grids[row]))]
            best = _selected(results)
            for index in range(len(results)):  # only the selected search run's model is tested
                if index != best:
                    tidy(Path(folder(share, row, index, first)) / "run", keep_model=False)
            table[share][row] = {
                "configs": [asdict(c) | {"label": c.label()} for c in grids[row]],
                "valid_ndcg@10": [r["valid_ndcg@10"] for r in results], "selected": best,
                "best_epochs": [r["best_epoch"] for r in results], "epochs": [r["epochs"] for r in results],
                "curves": [r["curve"] for r in results],
                "schedule": [inputs.settings.finetune_epochs, inputs.settings.patience, passes[share]],
                "runs": {first: results[best]},
                "seconds": sum(r["seconds"] for r in results), "cpu_seconds": sum(r["cpu_seconds"] for r in results),
            }  # fmt: skip
            if plan.search:
                calls.append((test_job, (folder(share, row, best, first), str(inputs.target_dir),
                                         inputs.settings.max_length, inputs.device)))  # fmt: skip
                tags.append((share, row, first))
            for seed in others:
                overrides = _finetune_overrides(inputs, row, grids[row][best], seed, share, passes[share],
                                                components[seed], plan, evaluate_test=True)  # fmt: skip
                calls.append((finetune_job, (folder(share, row, best, seed), str(inputs.target_dir), overrides)))
                tags.append((share, row, seed))
    say(f"   {len(calls)} test evaluations and runs of the other seeds at the selected configurations")
    for (share, row, seed), result in zip(tags, run_calls(calls, plan, say), strict=True):
        entry = table[share][row]
        entry["runs"][seed] = result
        if seed != first:
            entry["seconds"] += result["seconds"]
            entry["cpu_seconds"] += result["cpu_seconds"]
    for share in plan.shares:
        for row in DEMO_ROWS:
            runs = table[share][row]["runs"]
            table[share][row]["test_ranks"] = [runs[seed]["test_ranks"] for seed in plan.seeds]
    return table


def untrained_rows(
    inputs: CurveInputs, plan: CurvePlan, components: dict[int, dict[str, str]], say: Callable[[str], None]
) -> tuple[dict[float, dict[str, Any]], dict[str, Any]]:
    """Per share: popularity and content-knn searched on validation (test once); zero-shot once per seed."""
    from pmmrec.baselines import raw_text_embeddings, tune_baseline
    from pmmrec.data import leave_one_out, load_dataset, user_share_rows

    target = load_dataset(inputs.target_dir)
    split = leave_one_out(target.sequences)
    text_table = raw_text_embeddings(target.item_texts)
    knn = tune_baseline("content-knn", target, split, text_table)  # trains nothing: the same at every share
    per_share: dict[float, dict[str, Any]] = {}
    for share in plan.shares:
        rows = user_share_rows(split.num_users, share, plan.sample_seed)
        per_share[share] = {"popularity": tune_baseline("popularity", target, split, train_rows=rows), "content-knn": knn}
    calls: list[Call] = [
        (zero_shot_job, (str(inputs.out / "zero-shot" / f"s{seed}"), str(inputs.target_dir), components[seed],
                         inputs.settings.max_length, inputs.device))
        for seed in plan.seeds
    ]  # fmt: skip
    say("   zero-shot transfer (pre-trained text + user encoders, nothing trained on the target)")
    results = run_calls(calls, plan, say)
    zero_shot = {"test_ranks": [r["test_ranks"] for r in results],
                 "valid_ndcg@10": [_ndcg(r["valid_ranks"]) for r in results]}  # fmt: skip
    return per_share, zero_shot


def share_facts(target_dir: Path, settings: DemoSettings, plan: CurvePlan) -> dict[float, dict[str, Any]]:
    """Per share: training users, training interactions, training windows and passes per epoch."""
    from pmmrec.data import leave_one_out, load_dataset, user_share_rows

    split = leave_one_out(load_dataset(target_dir).sequences)
    full = training_windows(split.train, settings)
    facts = {}
    for share in plan.shares:
        rows = user_share_rows(split.num_users, share, plan.sample_seed)
        train = split.train.take(rows)
        windows = training_windows(train, settings)
        facts[share] = {
            "train_users": len(rows), "train_interactions": int(train.lengths.sum()), "train_windows": windows,
            "passes_per_epoch": share_passes(full, windows),
        }  # fmt: skip
    return facts


def run_curve(inputs: CurveInputs, plan: CurvePlan, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every row at every share and seed: the learning curve's ranks, searches and timings (curve_report turns
    them into tables, tests and the plot)."""
    started, cpu = time.perf_counter(), time.process_time()
    inputs.out.mkdir(parents=True, exist_ok=True)
    facts = share_facts(inputs.target_dir, inputs.settings, plan)
    components = pretrained_components(inputs, plan, say)
    trained = trained_rows(inputs, plan, components, {s: facts[s]["passes_per_epoch"] for s in plan.shares}, say)
    baselines, zero_shot = untrained_rows(inputs, plan, components, say)
    points = []
    for share in plan.shares:
        ranks: dict[str, list[list[int]]] = {
            name: [baselines[share][name].test_ranks.tolist()] for name in ("popularity", "content-knn")
        }
        ranks |= {row: trained[share][row]["test_ranks"] for row in DEMO_ROWS}
        ranks["pmmrec-zero-shot"] = zero_shot["test_ranks"]
        searches = {row: {k: v for k, v in trained[share][row].items() if k not in ("runs", "test_ranks")}
                    for row in DEMO_ROWS}  # fmt: skip
        searches |= {name: baselines[share][name].as_dict() for name in ("popularity", "content-knn")}
        points.append({"share": share, **facts[share], "test_ranks": ranks, "searches": searches})
    children = _children_cpu()
    return {
        "plan": asdict(plan), "settings": asdict(inputs.settings) | {"configs": None},
        "points": points, "zero_shot_valid_ndcg@10": zero_shot["valid_ndcg@10"], "seconds": time.perf_counter() - started,
        "cpu_seconds_main": time.process_time() - cpu, "cpu_seconds_workers": children,
        "cpu_seconds_jobs": sum(sum(p["searches"][row]["cpu_seconds"] for row in DEMO_ROWS) for p in points),
    }  # fmt: skip


def _ndcg(ranks: Sequence[int]) -> float:
    values = np.asarray(ranks, dtype=np.float64)
    return float(((values <= 10) / np.log2(values + 1.0)).mean())


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (the spawned workers)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
