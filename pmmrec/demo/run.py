"""`pmmrec demo`: pre-train on one MovieLens domain, publish, assemble, transfer to the other, compare with
confidence intervals and paired tests.

The target domain has disjoint items and users. A share of its items are *new items*: those that appear last in the
domain's time line; they occur only as users' validation and test targets, never in a training sequence
(`pmmrec data movielens --new-items`), so the new-item columns show what ID-based models cannot do, and the
validation split that picks epochs sees them too. Every row is also trained on shares of the target's users (a
learning curve, pmmrec.demo.curve): a small one by default, the whole one (five shares, three seeds, every trained
row searched on validation at every share) with `curve=True` (`pmmrec demo --curve`). The baselines are searched on
validation at every share (their search is cheap).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pmmrec.data import Dataset, build_movielens, leave_one_out, load_dataset, new_target_mask, training_items
from pmmrec.demo.curve import CURVE_SHARES, CurveInputs, CurvePlan, curve_grid, run_curve
from pmmrec.demo.curve_jobs import model_ranks
from pmmrec.demo.curve_report import curve_markdown, curve_text, plot_curve, summarise_curve
from pmmrec.demo.report import (
    comparisons,
    plot_test_ndcg,
    plot_validation_curves,
    results_markdown,
    results_text,
    row_summary,
    write_markdown,
)
from pmmrec.demo.rows import DEMO_ROWS, DemoSettings, pretrain_overrides, settings_for
from pmmrec.distributed import choose_device
from pmmrec.errors import PmmrecError
from pmmrec.fileio import write_json
from pmmrec.hub import publish_to_local_cache
from pmmrec.model import PMMRec
from pmmrec.references import format_hub_reference
from pmmrec.slots import content_model_slots
from pmmrec.training.jobs import train

HUB_ORG = "pmmrec-demo"
PUBLISHED_SLOTS = content_model_slots(["text"])  # what the text pre-training run writes: text, fusion and user
ROW_ORDER = ("popularity", "content-knn", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot")
MARKER = ".pmmrec-demo"
DEMO_FOLDERS = ("data", "runs", "models", "hub-cache", "curve")
DEMO_SHARES: tuple[float, ...] = (0.1, 0.25, 1.0)  # the default demo's small learning curve
QUICK_SHARES: tuple[float, ...] = (0.1, 0.25, 1.0)  # `--quick`'s
__all__ = ["model_ranks"]  # re-exported: the ranking the demo's rows are measured with


# Wall seconds of `pmmrec demo` (default) and `--quick` on an idle 2-core CPU, empty caches (docs/benchmarks.md,
# "How long the demo takes": 3 min 12 s and 25 s at load 0.4-1.2).
EXPECTED_SECONDS = {"default": 624, "quick": 104}  # docs/benchmarks.md, "How long the demo takes" (issue 26 rows)


def duration(seconds: float) -> str:
    """'25 s', '3 min 12 s'."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60} s"


def expected_line(label: str, measured: dict[str, float] = EXPECTED_SECONDS) -> str | None:
    """What a run of this setting should take, from a measured figure, and how busy this machine is now."""
    if label not in measured:
        return None
    cores = os.cpu_count() or 1
    try:
        load = f", load {os.getloadavg()[0]:.1f}"
    except OSError:  # no load average on this platform
        load = ""
    return (
        f"expected duration: about {duration(measured[label])} on an idle 2-core CPU (measured); this machine has "
        f"{cores} cores{load}, and a busy machine takes longer"
    )


def published_repo(slot: str) -> str:
    """The Hub repo of one of the demo's components (listed in hub/catalogue.json)."""
    return f"{HUB_ORG}/pmmrec-{slot}"


def _say(message: str) -> None:
    tqdm.write(f"[pmmrec demo] {message}")


def prepare_output(out: Path) -> Path:
    """An empty or earlier demo folder; a previous demo's outputs are replaced, anything else is refused."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise PmmrecError(f"{out} is not empty and was not made by `pmmrec demo`; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by pmmrec demo; its contents are replaced by the next demo run\n", encoding="utf-8")
    for name in DEMO_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    return out


def target_statistics(dataset: Dataset, min_length: int = 3) -> dict[str, Any]:
    """Users, items, interactions and new items of a target dataset, its validation/test new-item users, and how
    popular the new test targets were before the hold-out (dataset.json's record, when the builder wrote one)."""
    split = leave_one_out(dataset.sequences, min_length)
    record = dataset.info.get("preprocessing", {}).get("new_items")
    popularity = record.get("test_target_popularity", {}) if isinstance(record, dict) else {}
    return {
        "name": dataset.name,
        "users": split.num_users,
        "items": dataset.num_items,
        "interactions": int(sum(len(sequence) for sequence in dataset.sequences)),
        "training_interactions": int(sum(len(sequence) for sequence in split.train)),
        "new_items": int(dataset.num_items - len(training_items(split))),
        "new_item_rule": record.get("rule") if isinstance(record, dict) else None,
        "new_item_valid_users": int(new_target_mask(split, "valid").sum()),
        "new_item_test_users": int(new_target_mask(split, "test").sum()),
        "new_test_target_interactions": popularity.get("interactions_before_hold_out"),
    }


def demo_plan(quick: bool, curve: bool, seed: int) -> CurvePlan:
    """What the demo's learning curve runs: `--curve` the whole curve (5 shares, 3 seeds, every trained row searched
    on validation at every share); otherwise a small one (DEMO_SHARES, one seed, the setting's configurations)."""
    if curve:
        return CurvePlan(CURVE_SHARES, (seed, seed + 1, seed + 2), search=True)
    return CurvePlan(QUICK_SHARES if quick else DEMO_SHARES, (seed,), search=False)


def search_budgets(point: dict[str, Any], searched: bool) -> dict[str, str]:
    """What each row's table cell says about its search budget (the curve's 100% point)."""
    budgets = {name: f"{s['budget']} on validation (here): {s['selected_label']}"
               for name, s in point["searches"].items() if name in ("popularity", "content-knn")}  # fmt: skip
    budgets["pmmrec-zero-shot"] = "none (nothing trained on the target)"
    for row in DEMO_ROWS:
        search = point["searches"][row]
        label = search["configs"][search["selected"]]["label"]
        budgets[row] = (f"{len(search['configs'])} on validation (here): {label}" if searched
                        else f"1, fixed ({label}; see the notes)")  # fmt: skip
    return budgets


def demo(
    out: str | os.PathLike[str] = "demo_out",
    *,
    quick: bool = False,
    seed: int = 42,
    progress: bool = True,
    device: str | None = None,
    settings: DemoSettings | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """Run the whole transfer story on MovieLens-100K; returns what results.json holds.

    `settings` replaces the quick/default sizes; `curve` runs the whole learning curve (CURVE_SHARES, three seeds,
    every trained row searched on validation at every share) instead of the small one.
    """
    started = time.perf_counter()
    settings = settings or settings_for("quick" if quick else "demo", seed)
    out = prepare_output(Path(out))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = choose_device(device)  # every training run and every evaluation on this device
    on_device = {"device": str(where)}
    if (expected := expected_line(settings.label)) is not None and where.type == "cpu":
        _say(expected)

    source_dir, target_dir = _build_domains(out, settings)
    source, target = load_dataset(source_dir), load_dataset(target_dir)
    stats = target_statistics(target)
    _say(
        f"   source: {source.num_users} users, {source.num_items} items, {source.num_interactions:,} interactions "
        f"({source.num_interactions / stats['training_interactions']:.1f}x the target's training interactions); "
        f"target: {stats['users']} users, {stats['items']} items, {stats['new_items']} of them new (only ever a "
        "validation or test target)"
    )

    _say("2/5 pre-training text + user encoders on the source domain (next-item prediction, NID, RCL)")
    pre = train("pretrain", source_dir, out / "runs" / "pretrain", overrides=pretrain_overrides("text", settings) | on_device,
                progress=progress)  # fmt: skip
    references = _publish(out)

    plan = demo_plan(quick, curve, settings.seed)
    shares = ", ".join(f"{share:.0%}" for share in plan.shares)
    _say(f"4/5 the learning curve: every row trained on {shares} of the target's users (seeds "
         f"{', '.join(map(str, plan.seeds))}); popularity, content-knn, zero-shot transfer, SASRec-ID, "
         "pmmrec from scratch and pmmrec transferred")  # fmt: skip
    assembled_dir = out / "models" / "pmmrec-text-user"  # zero-shot: the published components assembled
    PMMRec.assemble(text=references["text"], user=references["user"]).save_pretrained(assembled_dir, overwrite=True)
    inputs = CurveInputs(out / "curve", source_dir, target_dir, settings, {settings.seed: references}, str(where))
    raw = run_curve(inputs, plan, say=_say)

    _say("5/5 results on the target domain's test split (full ranking over all items, 95% intervals over users)")
    new_users = new_target_mask(leave_one_out(target.sequences), "test")
    report = summarise_curve(raw, new_users)
    full = report["points"][-1]  # 100% of the training users: the main table
    budgets = search_budgets(full, plan.search)
    ranks = {name: [np.asarray(r) for r in full["test_ranks"][name]] for name in ROW_ORDER}
    rows = [row_summary(name, ranks[name], new_users, budgets[name]) for name in ROW_ORDER]
    elapsed = time.perf_counter() - started
    payload = {
        "rows": rows,
        "comparisons": comparisons(ranks, new_users),
        "notes": demo_notes(settings, stats, pre.best_epoch, references, elapsed, plan),
        "target": stats,
        "source": {"users": source.num_users, "items": source.num_items, "interactions": source.num_interactions},
        "validation_curves": {
            row: full["searches"][row]["curves"][full["searches"][row]["selected"]] for row in DEMO_ROWS
        },
        "validation_ndcg@10_untrained": {
            name: full["searches"][name]["configs"][full["searches"][name]["selected"]]["valid_ndcg@10"]
            for name in ("popularity", "content-knn")
        } | {"pmmrec-zero-shot": raw["zero_shot_valid_ndcg@10"][0]},
        "settings": {**asdict(settings), "configs": {k: asdict(v) for k, v in settings.configs.items()}},
        "references": references,
        "test_ranks": {name: [r.tolist() for r in ranks[name]] for name in ROW_ORDER},
        "curve": report,
        "seconds": elapsed,
    }
    write_json(out / "results.json", payload)
    _write_reports(out, payload, run_label(settings, plan))
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _build_domains(out: Path, settings: DemoSettings) -> tuple[Path, Path]:
    """Step 1: the source and target domains' dataset folders under OUT/data."""
    _say("1/5 building the MovieLens-100K source and target domains (disjoint items and users)")
    source_dir = build_movielens(out / "data" / "source", domain="source", overwrite=True)
    target_dir = build_movielens(out / "data" / "target", domain="target", new_items=settings.new_items, overwrite=True)
    return source_dir, target_dir


def _publish(out: Path) -> dict[str, str]:
    """Step 3: each pre-trained component into a local Hub cache (tag v1); returns slot -> hub: reference."""
    _say("3/5 publishing each component into a local Hub cache (tag v1) and using hub: references from here on")
    cache = out / "hub-cache"
    os.environ["HF_HUB_CACHE"] = str(cache)
    references: dict[str, str] = {}
    for slot in PUBLISHED_SLOTS:
        repo = published_repo(slot)
        commit = publish_to_local_cache(
            out / "runs" / "pretrain" / "components" / slot, repo, cache_dir=cache, tag="v1"
        )
        references[slot] = format_hub_reference(repo, "v1")
        _say(f"   {references[slot]} -> commit {commit[:12]}")
    return references


def run_label(settings: DemoSettings, plan: CurvePlan) -> str:
    """The setting and seeds, as the report titles name them."""
    seeds = f"seed {settings.seed}" if len(plan.seeds) == 1 else f"seeds {', '.join(map(str, plan.seeds))}"
    return f"{settings.label} setting, {seeds}"


def _write_reports(out: Path, payload: dict[str, Any], label: str) -> None:
    """results.md, the three plots, and the tables printed (results.json is written before)."""
    rows, tests, notes, report = payload["rows"], payload["comparisons"], payload["notes"], payload["curve"]
    title = f"pmmrec demo: transfer to a new MovieLens domain ({label})"
    intro = demo_intro(payload["target"], len(rows))
    markdown = results_markdown(rows, tests, notes, title=title, intro=intro)
    write_markdown(out / "results.md", markdown + "\n" + curve_markdown(report, f"Learning curve ({label})"))
    plot_validation_curves(payload["validation_curves"], payload["validation_ndcg@10_untrained"],
                           out / "valid_ndcg.png", f"Target-domain validation NDCG@10 per epoch ({label})")  # fmt: skip
    plot_test_ndcg(rows, out / "test_ndcg.png", f"Target-domain test NDCG@10 with 95% CIs ({label})")
    plot_curve(report, out / "curve.png", f"Test NDCG@10 against the share of training users ({label})")
    tqdm.write(results_text(rows, tests, title=title))
    tqdm.write(curve_text(report))
    for note in notes:
        tqdm.write(f"  {note}")
    written = ", ".join(str(out / name) for name in ("results.json", "results.md", "valid_ndcg.png", "test_ndcg.png"))
    tqdm.write(f"wrote {written} and {out / 'curve.png'}")


def demo_intro(stats: dict[str, Any], count: int) -> str:
    """The sentence under the title: what is compared, on what, by which measure."""
    return (
        f"{count} ways to recommend on the MovieLens-100K target domain are compared: each row ranks all {stats['items']} "
        f"target items for each of the {stats['users']} test users (items and users disjoint from the source domain "
        "the pre-trained rows learnt on), and is scored by where each user's held-out next item lands. "
        f"For {stats['new_item_test_users']} of those users the next item is a new item, one that no training "
        "sequence holds: the test of recommending by content."
    )


def demo_notes(
    settings: DemoSettings,
    stats: dict[str, Any],
    pretrain_epoch: int | None,
    references: dict[str, str],
    seconds: float,
    plan: CurvePlan,
) -> list[str]:
    """The notes printed under the table and written to results.md."""
    return [
        f"target domain: {stats['users']} users, {stats['items']} items, {stats['interactions']} interactions; "
        "leave-one-out, full ranking over all items, history excluded, ties in the user's favour",
        f"new items: the {stats['new_items']} items that appear last in the domain's time line (rule "
        f"{stats['new_item_rule']}) occur only as validation or test targets; {stats['new_item_test_users']} test users "
        f"({stats['new_item_valid_users']} validation users) have one as target; those test targets had "
        f"{_interactions(stats['new_test_target_interactions'])} interactions in the domain before the hold-out. "
        "Training knows only the items of its training sequences: new items are never negatives",
        "intervals: 95% bootstrap over users and seeds (seed x user; with one seed, over users only); tests: see "
        "the rule above the comparisons",
        f"learning curve: at each share only a seeded sample of the target's users trains (sample seed "
        f"{plan.sample_seed}, nested: each share's users include the smaller shares'); every user keeps their "
        "validation and test target and their history as input, so every share is evaluated on the same users; "
        "a share's runs may take as many steps as a 100% run (epoch cap and patience scaled)",
        f"pre-training kept epoch {pretrain_epoch} (cap {settings.pretrain_epochs}); fine-tuning stops after "
        f"{settings.patience} epochs without a better validation NDCG@10 (cap {settings.finetune_epochs}); d = {settings.dim}",
        f"text encoder: all-MiniLM-L6-v2 (packaged weights), top {settings.text_trainable_layers} layer(s) trained; "
        "content-knn uses the same raw weights with nothing trained; no images are used",
        f"zero-shot = {references['text']} + {references['user']} assembled, no fine-tuning; pmmrec-transfer = "
        f"{references['text']}, {references['fusion']}, {references['user']}, fine-tuned",
        (f"configurations: every trained row searched on validation at every share ({len(curve_grid('sasrec-id', settings))} "
         "learning-rate settings each, pmmrec.demo.curve.curve_grid), the test split evaluated once at the selected one"
         if plan.search else "configurations: fixed, one per row (" + ", ".join(
             f"{k}: {settings.config_of(k).label()}" for k in DEMO_ROWS) + "), selected on validation by "
         "benchmarks/quality.py on the domains built before issue 24 (hash rule), not searched again on these "
         "domains; `pmmrec demo --curve` searches at every share"),
        f"seed {settings.seed}; {settings.label} settings; {seconds:.0f} s on this machine ({torch.get_num_threads()} torch threads)",
    ]


def _interactions(summary: dict[str, Any] | None) -> str:
    """'min / median / max' of a popularity summary, or 'unknown'."""
    if not summary:
        return "unknown"
    return f"{summary['min']} / {summary['median']:g} / {summary['max']} (min / median / max)"
