"""One AdamW step over the trainer's parameter groups: torch's for-loop, foreach and fused implementations side by
side, in one run (what `pmmrec.training.optim.adamw` chooses: fused on CPU and CUDA).

Configurations (random weights, the trainer's groups: per slot x decay/no-decay, objective heads included):
- demo: the packaged all-MiniLM-L6-v2 at d = 128 (top layer trained), SASRec d = 128: what `pmmrec demo` trains;
- (a): a 12-layer, 768-wide BERT with its top 2 layers trained, SASRec d = 768;
- full: (a) plus a CLIP ViT-B/32-sized vision tower (top 2 blocks trained) and merge-attention fusion.

Every parameter gets a random gradient; each implementation runs 3 warm-up steps, then the median of `--repeats`
timed blocks of `--steps` steps is reported (ms per step), with the ratio to the for-loop (torch's default on CPU).

    python benchmarks/optimizer_step.py [--device cpu] [--config demo --config a --config full] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _measure import write_figures
from gpu_train_step import build_model, clip_b32_encoder
from train_step import demo_text_encoder, paper_text_encoder

from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.module import TrainingModule
from pmmrec.training.optim import parameter_groups

IMPLEMENTATIONS: dict[str, dict[str, Any]] = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def model_for(name: str) -> Any:
    if name == "demo":
        return build_model(demo_text_encoder(128), None)
    text = paper_text_encoder(768, layers=12, trainable=2)
    return build_model(text, clip_b32_encoder(768, 12, 224, 32) if name == "full" else None)


def time_steps(groups: list[dict[str, Any]], options: dict[str, Any], steps: int, repeats: int, device: torch.device) -> float:
    """Median ms per AdamW step over `repeats` blocks of `steps` steps, after 3 warm-up steps."""
    fresh = [dict(group) for group in groups]  # AdamW writes its options into the group dicts it is given
    optimizer = torch.optim.AdamW(fresh, lr=groups[0]["lr"], betas=(0.9, 0.999), eps=1e-8, **options)
    for _ in range(3):
        optimizer.step()
    blocks = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        blocks.append((time.perf_counter() - started) / steps * 1000)
    return statistics.median(blocks)


def run_config(name: str, device: torch.device, steps: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = model_for(name)
    config = load_train_config(finetune_defaults(), None, {"device": device.type})
    module = TrainingModule(model, config, torch.zeros(1683)).to(device)
    groups = parameter_groups(module, config)
    params = [p for group in groups for p in group["params"]]
    for parameter in params:
        parameter.grad = torch.randn_like(parameter)
    row: dict[str, Any] = {"config": name, "trainable_parameters": sum(p.numel() for p in params),
                           "tensors": len(params), "groups": len(groups)}  # fmt: skip
    for label, options in IMPLEMENTATIONS.items():
        snapshot = [p.detach().clone() for p in params]
        row[f"{label}_ms"] = round(time_steps(groups, options, steps, repeats, device), 2)
        with torch.no_grad():  # every implementation starts from the same weights
            for parameter, saved in zip(params, snapshot, strict=True):
                parameter.copy_(saved)
    row["fused_speedup_vs_for_loop"] = round(row["for-loop_ms"] / row["fused_ms"], 2)
    row["fused_speedup_vs_foreach"] = round(row["foreach_ms"] / row["fused_ms"], 2)
    print(
        f"{name:5s} {row['trainable_parameters']:>11,} params in {len(params):3d} tensors: for-loop {row['for-loop_ms']:8.2f} ms"
        f"  foreach {row['foreach_ms']:8.2f} ms  fused {row['fused_ms']:8.2f} ms  -> fused {row['fused_speedup_vs_for_loop']:.2f}x"
        f" the for-loop, {row['fused_speedup_vs_foreach']:.2f}x foreach",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", action="append", choices=["demo", "a", "full"], help="Repeatable (default: all).")
    parser.add_argument("--steps", type=int, default=10, help="Steps per timed block.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed blocks per implementation (median reported).")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    rows = [run_config(name, device, args.steps, args.repeats) for name in args.config or ["demo", "a", "full"]]
    load_after = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    write_figures(args.json, {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "device": str(device), "torch": torch.__version__, "load_average_before": load_before,
                    "load_average_after": load_after},
        "settings": {"steps": args.steps, "repeats": args.repeats}, "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
