"""`pmmrec demo`: pre-train on one MovieLens domain, publish, assemble, transfer to the other, compare with
confidence intervals and paired tests.

The target domain has disjoint items and users. A share of its items are *new items*: those that appear last in the
domain's time line; they occur only as users' validation and test targets, never in a training sequence
(`pmmrec data movielens --new-items`), so the new-item columns show what ID-based models cannot do, and the
validation split that picks epochs sees them too. The baselines are searched on validation here (their search is
cheap); the trained rows use the configuration benchmarks/quality.py selected on validation.
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

from pmmrec.baselines import BaselineSearch, raw_text_embeddings, tune_baseline
from pmmrec.data import Dataset, build_movielens, leave_one_out, load_dataset, new_target_mask, training_items
from pmmrec.demo.report import (
    comparisons,
    plot_test_ndcg,
    plot_validation_curves,
    results_markdown,
    results_text,
    row_summary,
    write_markdown,
)
from pmmrec.demo.rows import DEMO_ROWS, DemoSettings, pretrain_overrides, row_overrides, search_grid, settings_for
from pmmrec.distributed import choose_device
from pmmrec.errors import PmmrecError
from pmmrec.evaluation import metrics_from_ranks
from pmmrec.fileio import write_json
from pmmrec.hub import publish_to_local_cache
from pmmrec.inference import evaluate_split, make_collator
from pmmrec.model import PMMRec
from pmmrec.references import format_hub_reference
from pmmrec.slots import content_model_slots
from pmmrec.training.jobs import train

HUB_ORG = "pmmrec-demo"
PUBLISHED_SLOTS = content_model_slots(["text"])  # what the text pre-training run writes: text, fusion and user
ROW_ORDER = ("popularity", "content-knn", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot")
MARKER = ".pmmrec-demo"
DEMO_FOLDERS = ("data", "runs", "models", "hub-cache")


# Wall seconds of `pmmrec demo` (default) and `--quick` on an idle 2-core CPU, empty caches (docs/benchmarks.md,
# "How long the demo takes": 3 min 12 s and 25 s at load 0.4-1.2).
EXPECTED_SECONDS = {"default": 192, "quick": 25}


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


def model_ranks(model: PMMRec, dataset: Dataset, which: str, max_length: int) -> np.ndarray:
    """Per-user ranks of a model on the valid or test split (full ranking, history excluded), where the model is."""
    split = leave_one_out(dataset.sequences)
    model.bind_catalogue(dataset.item_ids)
    collator = make_collator(model, dataset)
    return evaluate_split(model, split, which, collator, dataset.num_items, model.device, max_length=max_length).ranks


def ndcg_at_10(ranks: np.ndarray) -> float:
    return metrics_from_ranks(torch.as_tensor(ranks), (10,))["ndcg@10"]


def untrained_rows(
    target: Dataset, zero_shot: PMMRec, settings: DemoSettings
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, BaselineSearch]]:
    """Valid and test ranks of popularity and content-knn (each searched on validation, test at the selected
    configuration) and of the zero-shot model (nothing trained on the target)."""
    split = leave_one_out(target.sequences)
    text_table = raw_text_embeddings(target.item_texts)
    ranks: dict[str, dict[str, np.ndarray]] = {}
    searches = {name: tune_baseline(name, target, split, text_table) for name in ("popularity", "content-knn")}
    for name, search in searches.items():
        ranks[name] = {"valid": search.valid_ranks, "test": search.test_ranks}
    ranks["pmmrec-zero-shot"] = {which: model_ranks(zero_shot, target, which, settings.max_length)
                                 for which in ("valid", "test")}  # fmt: skip
    return ranks, searches


def search_budgets(searches: dict[str, BaselineSearch]) -> dict[str, str]:
    """What each row's table cell says about its search budget."""
    budgets = {name: f"{len(s.configs)} on validation (here): {s.config.label()}" for name, s in searches.items()}
    budgets["pmmrec-zero-shot"] = "none (nothing trained on the target)"
    for row in DEMO_ROWS:
        budgets[row] = f"{len(search_grid(row))} on validation (benchmarks/quality.py)"
    return budgets


def demo(
    out: str | os.PathLike[str] = "demo_out",
    *,
    quick: bool = False,
    seed: int = 42,
    progress: bool = True,
    device: str | None = None,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run the whole transfer story on MovieLens-100K; returns what results.json holds.

    `settings` replaces the quick/default sizes (benchmarks/quality.py uses it for other settings).
    """
    started = time.perf_counter()
    settings = settings or settings_for("quick" if quick else "demo", seed)
    out = prepare_output(Path(out))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = choose_device(device)  # every training run and every evaluation on this device
    on_device = {"device": str(where)}
    if (expected := expected_line(settings.label)) is not None and where.type == "cpu":
        _say(expected)

    _say("1/5 building the MovieLens-100K source and target domains (disjoint items and users)")
    source_dir = build_movielens(out / "data" / "source", domain="source", overwrite=True)
    target_dir = build_movielens(out / "data" / "target", domain="target", new_items=settings.new_items, overwrite=True)
    source, target = load_dataset(source_dir), load_dataset(target_dir)
    stats = target_statistics(target)
    _say(
        f"   source: {source.num_users} users, {source.num_items} items; target: {stats['users']} users, "
        f"{stats['items']} items, {stats['new_items']} of them new (only ever a validation or test target)"
    )

    _say("2/5 pre-training text + user encoders on the source domain (next-item prediction, NID, RCL)")
    pre = train("pretrain", source_dir, out / "runs" / "pretrain", overrides=pretrain_overrides("text", settings) | on_device,
                progress=progress)  # fmt: skip

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

    _say("4/5 zero-training rows (popularity, content-knn, zero-shot transfer) and fine-tuning on the target domain")
    assembled_dir = out / "models" / "pmmrec-text-user"
    PMMRec.assemble(text=references["text"], user=references["user"]).save_pretrained(assembled_dir, overwrite=True)
    ranks, searches = untrained_rows(target, PMMRec.from_pretrained(assembled_dir).to(where), settings)
    curves: dict[str, list[float]] = {}
    chosen: dict[str, Any] = {}
    for name in DEMO_ROWS:
        _say(f"   fine-tuning {name} ({settings.config_of(name).label()})")
        result = train("finetune", target_dir, out / "runs" / name,
                       overrides=row_overrides(name, settings, {"text": references}) | on_device, progress=progress)  # fmt: skip
        assert result.test_ranks is not None
        ranks[name] = {"test": result.test_ranks}
        curves[name] = [entry["ndcg@10"] for entry in result.history]
        chosen[name] = {**asdict(settings.config_of(name)), "best_epoch": result.best_epoch}

    _say("5/5 results on the target domain's test split (full ranking over all items, 95% intervals over users)")
    new_users = new_target_mask(leave_one_out(target.sequences), "test")
    budgets = search_budgets(searches)
    rows = [row_summary(name, [ranks[name]["test"]], new_users, budgets[name]) for name in ROW_ORDER]
    tests = comparisons({name: [ranks[name]["test"]] for name in ROW_ORDER}, new_users)
    references_valid = {
        name: ndcg_at_10(ranks[name]["valid"]) for name in ("popularity", "content-knn", "pmmrec-zero-shot")
    }
    elapsed = time.perf_counter() - started
    notes = demo_notes(settings, stats, pre.best_epoch, references, elapsed)
    payload = {
        "rows": rows,
        "comparisons": tests,
        "notes": notes,
        "target": stats,
        "validation_curves": curves,
        "validation_ndcg@10_untrained": references_valid,
        "configurations": chosen,
        "baseline_searches": {name: search.as_dict() for name, search in searches.items()},
        "settings": {**asdict(settings), "configs": {k: asdict(v) for k, v in settings.configs.items()}},
        "references": references,
        "test_ranks": {name: [int(r) for r in ranks[name]["test"]] for name in ROW_ORDER},
        "seconds": elapsed,
    }
    write_json(out / "results.json", payload)
    label = f"{settings.label} setting, seed {settings.seed}"
    title = f"pmmrec demo: transfer to a new MovieLens domain ({label})"
    intro = demo_intro(stats, len(rows))
    write_markdown(out / "results.md", results_markdown(rows, tests, notes, title=title, intro=intro))
    plot_validation_curves(curves, references_valid, out / "valid_ndcg.png",
                           f"Target-domain validation NDCG@10 per epoch ({label})")  # fmt: skip
    plot_test_ndcg(rows, out / "test_ndcg.png", f"Target-domain test NDCG@10 with 95% CIs ({label})")
    tqdm.write(results_text(rows, tests, title=title))
    for note in notes:
        tqdm.write(f"  {note}")
    tqdm.write(
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'valid_ndcg.png'} and {out / 'test_ndcg.png'}"
    )
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


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
        "intervals: 95% bootstrap over users (one seed here: the seed x user bootstrap of benchmarks/quality.py "
        "needs several); tests: see the rule above the comparisons",
        f"pre-training kept epoch {pretrain_epoch} (cap {settings.pretrain_epochs}); fine-tuning stops after "
        f"{settings.patience} epochs without a better validation NDCG@10 (cap {settings.finetune_epochs}); d = {settings.dim}",
        f"text encoder: all-MiniLM-L6-v2 (packaged weights), top {settings.text_trainable_layers} layer(s) trained; "
        "content-knn uses the same raw weights with nothing trained; no images are used",
        f"zero-shot = {references['text']} + {references['user']} assembled, no fine-tuning; pmmrec-transfer = "
        f"{references['text']}, {references['fusion']}, {references['user']}, fine-tuned",
        f"configurations: selected on validation by benchmarks/quality.py on the target built before issue 24 (hash "
        f"rule, never-trained items as full-softmax negatives), not searched again since ({', '.join(f'{k}: {v.label()}' for k, v in settings.configs.items())})",
        f"seed {settings.seed}; {settings.label} settings; {seconds:.0f} s on this machine ({torch.get_num_threads()} torch threads)",
    ]


def _interactions(summary: dict[str, Any] | None) -> str:
    """'min / median / max' of a popularity summary, or 'unknown'."""
    if not summary:
        return "unknown"
    return f"{summary['min']} / {summary['median']:g} / {summary['max']} (min / median / max)"
