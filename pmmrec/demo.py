"""`pmmrec demo`: pre-train on one MovieLens domain, publish, assemble, transfer to the other, compare.

The target domain has disjoint items and users. A share of its items are held out as *new items*: they
appear only as users' last (test) item, never in a training sequence, so the cold-start columns show
what ID-based models cannot do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pmmrec.data import Dataset, build_movielens, leave_one_out, load_dataset, write_dataset
from pmmrec.distributed import choose_device
from pmmrec.errors import PmmrecError
from pmmrec.evaluation import metrics_from_ranks, rank_targets
from pmmrec.fileio import atomic_file, write_json
from pmmrec.hub import publish_to_local_cache
from pmmrec.inference import evaluate_split, make_collator
from pmmrec.model import PMMRec
from pmmrec.references import format_hub_reference
from pmmrec.training.jobs import train

HUB_ORG = "pmmrec-demo"
PUBLISHED_SLOTS = ("text", "fusion", "user")


def published_repo(slot: str) -> str:
    """The Hub repo of one of the demo's components (listed in hub/catalogue.json)."""
    return f"{HUB_ORG}/pmmrec-{slot}"


REPORT_K = 10
ROW_ORDER = ("popularity", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot")


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes; `quick` trades quality for a run of a few minutes."""

    pretrain_epochs: int
    finetune_epochs: int
    dim: int
    batch_size: int
    max_length: int
    cold_fraction: float
    seed: int
    label: str = "default"

    @classmethod
    def for_mode(cls, quick: bool, seed: int) -> DemoSettings:
        if quick:
            return cls(
                pretrain_epochs=1,
                finetune_epochs=2,
                dim=64,
                batch_size=64,
                max_length=20,
                cold_fraction=0.2,
                seed=seed,
                label="quick",
            )
        return cls(
            pretrain_epochs=4, finetune_epochs=5, dim=128, batch_size=64, max_length=20, cold_fraction=0.2, seed=seed
        )


def _say(message: str) -> None:
    tqdm.write(f"[pmmrec demo] {message}")


def _is_cold(item_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"cold:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def hold_out_new_items(source: Dataset, out: Path, fraction: float) -> tuple[Path, int]:
    """Write a copy of `source` where a deterministic share of items only ever occur as a user's last item.

    Returns the folder and the number of held-out (new) items.
    """
    cold = {item for item in source.item_ids if _is_cold(item, fraction)}
    user_items = []
    for sequence in source.sequences:
        items = [source.item_ids[i - 1] for i in sequence]
        kept = [item for item in items[:-1] if item not in cold] + items[-1:]
        user_items.append(kept)
    write_dataset(
        out,
        name=f"{source.name}-new-items",
        item_ids=source.item_ids,
        item_texts=source.item_texts,
        user_ids=source.user_ids,
        user_items=user_items,
        provenance={**source.info.get("provenance", {}), "derived_from": source.name},
        preprocessing={
            **source.info.get("preprocessing", {}),
            "new_items": f"{len(cold)} items (sha256 rule, share {fraction}) kept only as users' last item",
        },
        overwrite=True,
    )
    return out, len(cold)


def popularity_ranks(dataset: Dataset, which: str = "test") -> np.ndarray:
    """Ranks under most-popular-first (training counts; ties broken by catalogue order), history excluded."""
    split = leave_one_out(dataset.sequences)
    counts = np.zeros(dataset.num_items + 1, dtype=np.float64)
    for sequence in split.train:
        np.add.at(counts, sequence, 1.0)
    scores = counts - np.arange(dataset.num_items + 1) / (dataset.num_items + 1)  # deterministic tie-break
    histories = split.test_history if which == "test" else split.valid_history
    targets = split.test_target if which == "test" else split.valid_target
    unique = [np.unique(h) for h in histories]
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in unique])])
    table = torch.tensor(scores, dtype=torch.float64).unsqueeze(1)
    users = torch.ones(len(targets), 1, dtype=torch.float64)
    return rank_targets(
        users, table, torch.as_tensor(targets), torch.as_tensor(indptr), torch.as_tensor(np.concatenate(unique))
    ).numpy()


def cold_mask(dataset: Dataset) -> np.ndarray:
    """True for users whose test target never occurs in any training sequence."""
    split = leave_one_out(dataset.sequences)
    seen = set(np.concatenate(split.train).tolist()) if split.train else set()
    return np.array([int(t) not in seen for t in split.test_target], dtype=bool)


def test_ranks(model: PMMRec, dataset: Dataset) -> np.ndarray:
    """Per-user test ranks of a model on a dataset (full ranking), on the device the model is on."""
    split = leave_one_out(dataset.sequences)
    collator = make_collator(model, dataset)
    result = evaluate_split(model, split, "test", collator, dataset.num_items, model.device)
    return result.ranks


def summarise(model_name: str, ranks: np.ndarray, cold: np.ndarray) -> dict[str, Any]:
    """One results row: HR/NDCG/MRR@10 over all test users and over users with a new (cold) target."""
    overall = metrics_from_ranks(torch.as_tensor(ranks), (REPORT_K,))
    row: dict[str, Any] = {
        "model": model_name,
        "hr@10": overall["hr@10"],
        "ndcg@10": overall["ndcg@10"],
        "mrr@10": overall["mrr@10"],
        "users": len(ranks),
    }
    if cold.any():
        cold_metrics = metrics_from_ranks(torch.as_tensor(ranks[cold]), (REPORT_K,))
        row.update({f"cold_{k}": cold_metrics[k] for k in ("hr@10", "ndcg@10", "mrr@10")})
    else:
        row.update({"cold_hr@10": None, "cold_ndcg@10": None, "cold_mrr@10": None})
    row["cold_users"] = int(cold.sum())
    return row


def results_markdown(rows: Sequence[dict[str, Any]], notes: Sequence[str]) -> str:
    """The results table as Markdown."""

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "| model | HR@10 | NDCG@10 | MRR@10 | cold HR@10 | cold NDCG@10 | cold MRR@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {fmt(row['hr@10'])} | {fmt(row['ndcg@10'])} | {fmt(row['mrr@10'])} | "
            f"{fmt(row['cold_hr@10'])} | {fmt(row['cold_ndcg@10'])} | {fmt(row['cold_mrr@10'])} |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def results_text(rows: Sequence[dict[str, Any]]) -> str:
    """The results table as aligned plain text for the terminal."""
    header = f"{'model':<18}{'HR@10':>8}{'NDCG@10':>9}{'MRR@10':>8}  | {'cold HR@10':>10}{'cold NDCG@10':>13}"
    lines = [header, "-" * len(header)]
    for row in rows:
        cold_hr = "-" if row["cold_hr@10"] is None else f"{row['cold_hr@10']:.4f}"
        cold_ndcg = "-" if row["cold_ndcg@10"] is None else f"{row['cold_ndcg@10']:.4f}"
        lines.append(
            f"{row['model']:<18}{row['hr@10']:>8.4f}{row['ndcg@10']:>9.4f}{row['mrr@10']:>8.4f}  | {cold_hr:>10}{cold_ndcg:>13}"
        )
    return "\n".join(lines)


def plot_curves(curves: dict[str, list[float]], path: Path, title: str = "validation NDCG@10 per epoch") -> None:
    """A small line chart (PNG) drawn with Pillow, so the demo needs no plotting library."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    values = [v for series in curves.values() for v in series]
    top = max([*values, 1e-6]) * 1.1
    epochs = max((len(series) for series in curves.values()), default=1)
    x_span, y_span = width - 2 * margin - 140, height - 2 * margin
    draw.line([(margin, margin), (margin, height - margin), (width - margin - 140, height - margin)], fill="black")
    draw.text((margin, 15), title, fill="black")
    for tick in range(5):
        value = top * tick / 4
        y = height - margin - y_span * tick / 4
        draw.text((5, y - 6), f"{value:.3f}", fill="black")
        draw.line([(margin - 4, y), (margin, y)], fill="black")
    for epoch in range(1, epochs + 1):
        x = margin + x_span * (epoch - 1) / max(epochs - 1, 1)
        draw.text((x - 3, height - margin + 8), str(epoch), fill="black")
    draw.text((width // 2 - 60, height - 25), "epoch", fill="black")
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for index, (name, series) in enumerate(curves.items()):
        colour = palette[index % len(palette)]
        points = [
            (margin + x_span * e / max(epochs - 1, 1), height - margin - y_span * v / top) for e, v in enumerate(series)
        ]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = margin + 18 * index
        draw.rectangle([width - margin - 120, legend_y, width - margin - 108, legend_y + 10], fill=colour)
        draw.text((width - margin - 102, legend_y - 2), name, fill="black")
    with atomic_file(path, mode="wb") as handle:
        image.save(handle, format="PNG")


MARKER = ".pmmrec-demo"
DEMO_FOLDERS = ("data", "runs", "models", "hub-cache")


def prepare_output(out: Path) -> Path:
    """An empty or earlier demo folder; a previous demo's outputs are replaced, anything else is refused."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise PmmrecError(f"{out} is not empty and was not made by `pmmrec demo`; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by pmmrec demo; its contents are replaced by the next demo run\n", encoding="utf-8")
    for name in DEMO_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    return out


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

    `settings` replaces the quick/default sizes (the quality benchmark's larger setting uses it).
    """
    started = time.perf_counter()
    settings = settings or DemoSettings.for_mode(quick, seed)
    out = prepare_output(Path(out))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    context_device = choose_device(device)
    common = {
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "seed": settings.seed,
        "device": str(context_device),
    }

    _say("1/5 building the MovieLens-100K source and target domains (disjoint items and users)")
    source_dir = build_movielens(out / "data" / "source", domain="source", overwrite=True)
    raw_target = build_movielens(out / "data" / "target-all", domain="target", overwrite=True)
    target_dir, new_items = hold_out_new_items(
        load_dataset(raw_target), out / "data" / "target", settings.cold_fraction
    )
    target = load_dataset(target_dir)
    source = load_dataset(source_dir)
    _say(
        f"   source: {source.num_users} users, {source.num_items} items; target: {target.num_users} users, "
        f"{target.num_items} items, of which {new_items} are new items (only ever a last item)"
    )

    _say("2/5 pre-training text + user encoders on the source domain (next-item prediction, NID, RCL)")
    pre = train(
        "pretrain",
        source_dir,
        out / "runs" / "pretrain",
        overrides={
            **common,
            "epochs": settings.pretrain_epochs,
            "patience": 2,
            "model": {"modalities": ["text"], "dim": settings.dim},
        },
        progress=progress,
    )

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

    _say("4/5 assembling text + user from the Hub references and transferring to the target domain")
    assembled = PMMRec.assemble(text=references["text"], user=references["user"])
    assembled_dir = out / "models" / "pmmrec-text-user"
    assembled.save_pretrained(assembled_dir, overwrite=True)
    cold = cold_mask(target)
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[float]] = {}
    rows["popularity"] = summarise("popularity", popularity_ranks(target), cold)
    rows["pmmrec-zero-shot"] = summarise(
        "pmmrec-zero-shot", test_ranks(PMMRec.from_pretrained(assembled_dir).to(context_device), target), cold
    )
    # SASRec-ID learns every item vector from scratch: it gets SASRec's usual lr (1e-3), PMMRec the paper's 1e-4.
    runs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "sasrec-id": ({"item_tower": "id", "dim": settings.dim}, {"lr": 1e-3}),
        "pmmrec-scratch": ({"modalities": ["text"], "dim": settings.dim}, {}),
        # The full transfer: text encoder, fusion and user encoder, each from its own hub: reference.
        "pmmrec-transfer": (
            {"text": references["text"], "fusion": references["fusion"], "user": references["user"]},
            {},
        ),
    }
    for name, (spec, extra) in runs.items():
        _say(f"   fine-tuning {name}")
        result = train(
            "finetune",
            target_dir,
            out / "runs" / name,
            overrides={**common, "epochs": settings.finetune_epochs, **extra, "model": spec},
            progress=progress,
        )
        assert result.model is not None
        rows[name] = summarise(name, test_ranks(result.model, target), cold)
        curves[name] = [entry["ndcg@10"] for entry in result.history]

    _say("5/5 results on the target domain's test split (full ranking over all items)")
    ordered = [rows[name] for name in ROW_ORDER]
    notes = [
        f"target domain: {target.num_users} users, {target.num_items} items; leave-one-out, full ranking, history excluded",
        f"cold = the {int(cold.sum())} test users whose target is a new item (never in any training sequence)",
        f"pre-training: {pre.best_epoch} of {settings.pretrain_epochs} epochs kept (source valid NDCG@10 "
        f"{pre.best_valid.get('ndcg@10', float('nan')):.4f}); fine-tuning {settings.finetune_epochs} epochs; d = {settings.dim}",
        "text encoder: all-MiniLM-L6-v2 (packaged weights), top 2 layers trained; no images are used",
        f"zero-shot = {references['text']} + {references['user']} assembled, no fine-tuning; pmmrec-transfer = the full "
        f"transfer ({references['text']}, {references['fusion']}, {references['user']}), fine-tuned; the text-only "
        "fusion has no weights, so text + user and the full transfer start from the same weights",
        f"seed {settings.seed}; {settings.label} settings; {time.perf_counter() - started:.0f} s on this machine",
    ]
    payload = {"rows": ordered, "notes": notes, "settings": settings.__dict__, "references": references}
    write_json(out / "results.json", payload)
    with atomic_file(out / "results.md") as handle:
        handle.write(results_markdown(ordered, notes))
    plot_curves(curves, out / "valid_ndcg.png")
    tqdm.write(results_text(ordered))
    for note in notes:
        tqdm.write(f"  {note}")
    tqdm.write(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'valid_ndcg.png'}")
    return json.loads((out / "results.json").read_text(encoding="utf-8"))
