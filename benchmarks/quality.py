"""Quality table: the demo's comparison over several seeds, plus ablations on the source->target transfer.

For each seed it runs `pmmrec demo` (popularity, SASRec-ID, PMMRec from scratch, transferred, zero-shot;
cold-start columns), then optionally:
- objective ablations: pre-train again with NID or RCL switched off and fine-tune the transferred text + user;
- component subsets: transfer only the text encoder (fresh user encoder), only the user encoder (fresh
  text encoder on the same MiniLM backbone), and both (the demo's pmmrec-transfer row).
NICL needs both a text and a vision encoder; the demo's model is text-only (MovieLens has no real images),
so NICL is not trained and its ablation is not run here.

Usage:
    python benchmarks/quality.py --setting demo --seeds 0 1 2 --ablations --out runs/quality --json quality.json
    python benchmarks/quality.py --setting large --seeds 0 1 2 --out runs/quality-large --json quality-large.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from pmmrec.data import load_dataset
from pmmrec.demo import DemoSettings, cold_mask, demo, summarise, test_ranks
from pmmrec.training.jobs import ModelSpec, finetune, pretrain

METRICS = ("hr@10", "ndcg@10", "mrr@10", "cold_ndcg@10")


def settings_for(name: str, seed: int) -> DemoSettings:
    """The demo's default sizes, or a larger setting (wider model, more epochs)."""
    if name == "demo":
        return DemoSettings.for_mode(quick=False, seed=seed)
    if name == "quick":
        return DemoSettings.for_mode(quick=True, seed=seed)
    if name == "large":
        return DemoSettings(
            pretrain_epochs=8,
            finetune_epochs=10,
            dim=256,
            batch_size=64,
            max_length=20,
            cold_fraction=0.2,
            seed=seed,
            label="large",
        )
    raise SystemExit(f"unknown --setting {name!r} (quick, demo, large)")


def transfer_variants(out: Path, settings: DemoSettings) -> list[dict[str, Any]]:
    """Ablations on one seed's demo folder: objectives switched off in pre-training, component subsets."""
    source, target_dir = out / "data" / "source", out / "data" / "target"
    target = load_dataset(target_dir)
    cold = cold_mask(target)
    common = {"batch_size": settings.batch_size, "max_length": settings.max_length, "seed": settings.seed}
    components = out / "runs" / "pretrain" / "components"
    rows = []

    def transfer(name: str, spec: ModelSpec) -> None:
        result = finetune(
            target_dir,
            out / "runs" / name,
            spec,
            overrides={**common, "epochs": settings.finetune_epochs},
            progress=False,
        )
        assert result.model is not None
        rows.append(summarise(name, test_ranks(result.model, target), cold))

    transfer("transfer-text-only", ModelSpec(text=str(components / "text")))
    transfer("transfer-user-only", ModelSpec(user=str(components / "user"), modalities=["text"]))
    for objective in ("nid", "rcl"):
        pre_dir = out / "runs" / f"pretrain-no-{objective}"
        pretrain(
            source,
            pre_dir,
            ModelSpec(modalities=["text"], dim=settings.dim),
            overrides={
                **common,
                "epochs": settings.pretrain_epochs,
                "patience": 2,
                "objectives": {"weights": {objective: 0.0}},
            },
            progress=False,
        )
        parts = pre_dir / "components"
        transfer(f"transfer-no-{objective}", ModelSpec(text=str(parts / "text"), user=str(parts / "user")))
    return rows


def aggregate(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation of each metric per model over seeds."""
    names = [row["model"] for row in per_seed[0]]
    table = []
    for name in names:
        entry: dict[str, Any] = {"model": name, "seeds": len(per_seed)}
        for metric in METRICS:
            values = [
                row[metric] for rows in per_seed for row in rows if row["model"] == name and row[metric] is not None
            ]
            entry[metric] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| model | HR@10 | NDCG@10 | MRR@10 | cold NDCG@10 |", "|---|---|---|---|---|"]
    for row in table:
        cells = []
        for metric in METRICS:
            mean, std = row[metric], row[f"{metric}_std"]
            cells.append("-" if mean is None else f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="demo", help="quick, demo or large")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablations", action="store_true", help="also run objective ablations and component subsets")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    per_seed: list[list[dict[str, Any]]] = []
    for seed in args.seeds:
        settings = settings_for(args.setting, seed)
        seed_dir = args.out / f"seed-{seed}"
        done = args.out / f"seed-{seed}.json"  # finished seeds are kept, so an interrupted run can continue
        if done.is_file():
            per_seed.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        result = demo(seed_dir, settings=settings, progress=False)
        rows = list(result["rows"])
        if args.ablations:
            rows += transfer_variants(seed_dir, settings)
        done.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        per_seed.append(rows)
        print(f"seed {seed} done after {time.perf_counter() - started:.0f} s", flush=True)
    table = aggregate(per_seed)
    print(f"\nsetting {args.setting}, seeds {args.seeds} (mean ± std), {time.perf_counter() - started:.0f} s")
    print(markdown(table))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"setting": args.setting, "seeds": args.seeds, "table": table, "per_seed": per_seed}, indent=2)
            + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
