"""Training-step throughput and model FLOPs utilisation on a GPU (issue 17): the naive path against pmmrec's.

Two configurations, random weights, MovieLens-100K source-domain users with their real item texts:

- (a) text-only: a 12-layer, 768-wide BERT (top 2 layers trained), SASRec d = 768;
- (full) the paper's multi-modal size: that text encoder, a CLIP ViT-B/32-sized vision tower (12 blocks, width 768,
  32 px patches on 224 px images: 50 tokens; top 2 blocks trained), merge-attention fusion and SASRec at d = 768.
  Images are synthetic (random 32 px pictures in an LMDB, resized to 224 px by the collator).

Both paths run the same batches from the same weights under bf16 autocast (forward + backward + AdamW):
- naive (the reference's way): every item slot of the batch, padding and duplicates included, through every layer
  of both encoders (frozen bottom included), text at its full 50-token width;
- optimised (pmmrec's TrainingModule): each distinct item once, the frozen bottoms read from the frozen-prefix
  cache (built once on the GPU, reported apart), text in the packed token layout (real tokens only).

Model FLOPs utilisation = FLOPs of the work actually done per step / step time / the GPU's bf16 dense peak from its
datasheet. The work is counted by torch.utils.flop_counter.FlopCounterMode on one step of each path (matrix
multiplies, convolutions and attention as executed, forward and backward); the bf16 torch.mm throughput of a large
square GEMM measured in the same run is reported beside it. One optimised step is profiled (torch.profiler, CUDA
time per kernel).

    python benchmarks/gpu_train_step.py [--device cuda] [--batch-users 64] [--steps 6] [--json PATH]

On a CPU (`--device cpu --tiny`) it runs tiny shapes in float32, to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _measure import write_figures
from torch.utils.flop_counter import FlopCounterMode
from train_step import MAX_TOKENS, Setting, load_domain, make_batches, paper_text_encoder

from pmmrec.components import (
    CLIPVisionEncoder,
    CLIPVisionEncoderConfig,
    HFTextEncoder,
    MergeAttentionConfig,
    MergeAttentionFusion,
    ModalityTokens,
    SASRecConfig,
    SASRecUserEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
)
from pmmrec.components._backbones import sanitise_backbone_config
from pmmrec.data import SequenceBatch
from pmmrec.model import PMMRec
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule
from pmmrec.training.optim import adamw

# bf16 dense tensor-core peak (TFLOP/s, without sparsity) from NVIDIA's datasheets.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
LR = 1e-4
MAX_LENGTH = 20


def datasheet_peak(device: torch.device) -> tuple[str, float | None]:
    """(device name, bf16 dense peak in TFLOP/s or None where the datasheet figure is not known here)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return name, PEAK_BF16_TFLOPS[key]
    return name, None


def clip_b32_encoder(width: int, layers: int, image_size: int, patch: int) -> CLIPVisionEncoder:
    """A randomly initialised CLIP vision tower (ViT-B/32 at width 768, 12 blocks, 224 px, 32 px patches)."""
    from transformers import CLIPVisionConfig

    backbone = CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=max(width // 64, 1), image_size=image_size, patch_size=patch,
    )  # fmt: skip
    config = CLIPVisionEncoderConfig(
        dim=width, backbone=f"random-clip-vit-{layers}x{width}-p{patch}",
        backbone_config=sanitise_backbone_config(backbone.to_dict()), image_size=image_size, trainable_layers=2,
    )  # fmt: skip
    return CLIPVisionEncoder(config)


def build_model(text: HFTextEncoder, vision: CLIPVisionEncoder | None) -> PMMRec:
    dim = text.dim
    heads = max(dim // 64, 1)
    user = SASRecUserEncoder(SASRecConfig(dim=dim, max_length=MAX_LENGTH, layers=2, heads=heads, dropout=0.0))
    if vision is None:
        fusion: Any = TextOnlyFusion(TextOnlyConfig(dim=dim))
    else:
        fusion = MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads, dropout=0.0))
    model = PMMRec(user=user, text=text, vision=vision, fusion=fusion)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


class NaiveModule(TrainingModule):
    """The reference's computation: every slot through every layer of the encoders, then pmmrec's loss."""

    def __init__(self, model: PMMRec, config: TrainConfig, log_popularity: torch.Tensor, text_rows: Any) -> None:
        super().__init__(model, config, log_popularity)
        assert isinstance(model.text, HFTextEncoder)
        model.text.token_layout = "padded"
        self.register_buffer("text_ids", text_rows[0], persistent=False)
        self.register_buffer("text_mask", text_rows[1], persistent=False)

    def forward(self, batch: SequenceBatch, corruption_seed: int) -> dict[str, torch.Tensor]:
        model = self.model
        assert model.text is not None and model.fusion is not None
        flat = batch.item_seq.reshape(-1)  # every slot: padding (item 0) and duplicates included
        text_tokens, text_mask = model.text(self.text_ids[flat], self.text_mask[flat])  # all 50 columns
        image_tokens = None
        if model.vision is not None:
            assert batch.pixel_values is not None
            image_tokens = model.vision(batch.pixel_values[batch.slot_index.reshape(-1)])
        tokens = {"text": ModalityTokens(text_tokens, text_mask)}
        if image_tokens is not None:
            tokens["vision"] = ModalityTokens(image_tokens, None)
        slot_embeddings = model.fusion(tokens)
        seq_mask = batch.seq_mask
        per_slot = slot_embeddings.view(*seq_mask.shape, -1) * seq_mask.unsqueeze(-1).to(slot_embeddings.dtype)
        first = torch.zeros(len(batch.unique_items), dtype=torch.long, device=flat.device)
        slots = torch.arange(flat.numel(), device=flat.device)
        real = seq_mask.reshape(-1)
        first.scatter_reduce_(0, batch.slot_index.reshape(-1)[real], slots[real], "amin", include_self=False)
        states = model.encode_users(per_slot[:, :-1], seq_mask[:, :-1])
        states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
        rec = self.next_item(
            states, slot_embeddings[first], batch.slot_index, seq_mask, batch.unique_items, self.log_popularity
        )
        return {"rec": rec}


def step(module: TrainingModule, optimizer: torch.optim.Optimizer, batch: SequenceBatch, dtype: Any) -> float:
    """One forward + backward + AdamW step under autocast; returns the loss (synchronises the device)."""
    device = batch.item_seq.device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = module(batch, 0)["rec"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def timed(run: Any, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    value = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value, time.perf_counter() - started


def counted_flops(run: Any) -> float:
    """FLOPs of one call as executed (FlopCounterMode: matmuls, convolutions, attention; forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return float(counter.get_total_flops())


def mm_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Best torch.mm throughput on [size, size] x [size, size] in `dtype` (TFLOP/s)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        _, took = timed(lambda: torch.mm(a, b), device)
        best = min(best, took)
    return 2.0 * size**3 / best / 1e12


def cuda_profile(
    run: Any, device: torch.device, limit: int = 12, attribute: str | None = None
) -> list[dict[str, Any]]:
    """Where one step's time goes (torch.profiler): self device time per operator, or `attribute` (e.g. CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attribute = attribute or ("self_device_time_total" if device.type == "cuda" else "self_cpu_time_total")
    events = sorted(prof.key_averages(), key=lambda event: getattr(event, attribute), reverse=True)
    total = sum(getattr(event, attribute) for event in events) or 1.0
    return [
        {"op": event.key, "self_ms": getattr(event, attribute) / 1000, "share": getattr(event, attribute) / total}
        for event in events[:limit]
    ]


def python_profile(run: Any, limit: int = 15) -> list[dict[str, Any]]:
    """Python functions with the most own time in one call (cProfile): host work outside PyTorch's operators."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]  # type: ignore[attr-defined]
    return [
        {"function": f"{path.rsplit('/', 1)[-1]}:{line}({name})", "calls": calls, "own_ms": own * 1000,
         "cumulative_ms": cumulative * 1000}
        for (path, line, name), (_, calls, own, cumulative, _) in rows
    ]  # fmt: skip


def run_config(
    name: str, model: PMMRec, batches: list[SequenceBatch], collator: Any, log_popularity: torch.Tensor,
    device: torch.device, dtype: Any, peak: float | None,
) -> dict[str, Any]:  # fmt: skip
    config = TrainConfig.model_validate({"objectives": {"weights": {"rec": 1.0, "nicl": 0.0, "nid": 0.0, "rcl": 0.0}}})
    log_popularity = log_popularity.to(device)
    text_rows = (collator.text_ids.to(device), collator.text_mask.to(device))
    naive = NaiveModule(copy.deepcopy(model), config, log_popularity, text_rows).to(device)
    optimised = TrainingModule(copy.deepcopy(model), config, log_popularity).to(device)
    optimised.model.text.token_layout = "packed"  # type: ignore[union-attr]
    cache, cache_s = timed(lambda: FrozenPrefixCache.for_model(optimised.model, collator, device), device)
    optimised.prefix_cache = cache
    modules = {"naive": naive, "optimised": optimised}
    trainable = {key: [p for p in module.parameters() if p.requires_grad] for key, module in modules.items()}
    optimisers = {  # the reference's AdamW (torch's default: foreach on CUDA); pmmrec's trainer uses the fused one
        "naive": torch.optim.AdamW(trainable["naive"], lr=LR),
        "optimised": adamw([{"params": trainable["optimised"], "lr": LR}], device),
    }
    on_device = [batch.to(device) for batch in batches]
    seconds: dict[str, list[float]] = {key: [] for key in modules}
    losses: dict[str, list[float]] = {key: [] for key in modules}
    for index, batch in enumerate(on_device):  # interleaved; the first step of each path is a warm-up
        for key, module in modules.items():
            loss, took = timed(lambda m=module, k=key, b=batch: step(m, optimisers[k], b, dtype), device)
            losses[key].append(loss)
            seconds[key].append(took)
            print(f"  [{name}] step {index + 1}/{len(on_device)} {key:>9}: loss {loss:.5f}, {took * 1000:8.1f} ms")
    flops = {
        key: float(np.mean([counted_flops(lambda m=module, k=key, b=b: step(m, optimisers[k], b, dtype))
                            for b in on_device[1:3]]))
        for key, module in modules.items()
    }  # fmt: skip
    profile = cuda_profile(lambda: step(optimised, optimisers["optimised"], on_device[-1], dtype), device)
    python = python_profile(lambda: step(optimised, optimisers["optimised"], on_device[-1], dtype))
    host = cuda_profile(
        lambda: step(optimised, optimisers["optimised"], on_device[-1], dtype), device, attribute="self_cpu_time_total"
    )
    timed_steps = slice(1, None)
    items = sum(int(batch.seq_mask.sum()) for batch in batches[timed_steps])
    rate = {key: items / sum(seconds[key][timed_steps]) for key in modules}
    step_s = {key: float(np.mean(seconds[key][timed_steps])) for key in modules}
    achieved = {key: flops[key] / step_s[key] / 1e12 for key in modules}
    real_tokens = [int(collator.text_mask[b.unique_items].sum()) for b in batches]
    return {
        "config": name,
        "batch_users": int(batches[0].item_seq.shape[0]),
        "steps_timed": len(batches) - 1,
        "slots_per_batch": float(np.mean([b.seq_mask.numel() for b in batches])),
        "real_items_per_batch": float(np.mean([int(b.seq_mask.sum()) for b in batches])),
        "distinct_items_per_batch": float(np.mean([len(b.unique_items) for b in batches])),
        "real_tokens_per_batch": float(np.mean(real_tokens)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "items_per_s_naive": rate["naive"],
        "items_per_s_optimised": rate["optimised"],
        "speedup": rate["optimised"] / rate["naive"],
        "step_ms_naive": step_s["naive"] * 1000,
        "step_ms_optimised": step_s["optimised"] * 1000,
        "prefix_cache_build_s": cache_s,
        "prefix_cache_items": len(collator.item_ids),
        "work_tflop_per_step_naive": flops["naive"] / 1e12,
        "work_tflop_per_step_optimised": flops["optimised"] / 1e12,
        "achieved_tflops_naive": achieved["naive"],
        "achieved_tflops_optimised": achieved["optimised"],
        "mfu_naive": achieved["naive"] / peak if peak else None,
        "mfu_optimised": achieved["optimised"] / peak if peak else None,
        "losses": losses,
        "profile_optimised_step": profile,
        "host_profile_optimised_step": host,
        "python_profile_optimised_step": python,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--batch-users", type=int, default=64, help="users per batch (default 64, the paper's)")
    parser.add_argument("--steps", type=int, default=6, help="batches per configuration, the first a warm-up")
    parser.add_argument("--only", choices=["a", "full"], help="run one configuration")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes in float32 (checks the script on a CPU)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cudnn-attention", action="store_true", help="keep SDPA off its cuDNN backend")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = None if args.tiny else torch.bfloat16
    width, layers, patch = (64, 3, 32) if args.tiny else (768, 12, 32)
    device_name, peak = datasheet_peak(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pmmrec-gpu-bench-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("PMMREC_CACHE", str(workdir / "cache"))
        dataset = load_domain(workdir, "source")
        print(f"{device_name}: torch {torch.__version__}, {platform.machine()}; {dataset.num_items} items, "
              f"{len(dataset.sequences)} users; batch {args.batch_users} users, max {MAX_TOKENS} tokens per text")  # fmt: skip
        for key in ("a", "full") if args.only is None else (args.only,):
            torch.manual_seed(args.seed)
            text = paper_text_encoder(width, layers=layers, trainable=2)
            vision = clip_b32_encoder(width, layers, 224, patch) if key == "full" else None
            setting = Setting(key, "", args.batch_users, args.steps, "batches")
            images = workdir / f"images-{key}.lmdb" if vision is not None else None
            collator, batches, log_popularity, _ = make_batches(dataset, text.tokenizer, setting, args.seed, images)
            model = build_model(text, vision)
            shape = f"{layers}x{width}"
            name = f"(a) text {shape}, top 2" if key == "a" else f"(full) text {shape} + CLIP ViT/{patch} {shape}, top 2 each"
            rows.append(run_config(name, model, batches, collator, log_popularity, device, dtype, peak))
    mm = mm_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32, 512 if args.tiny else 8192)
    print(f"\n{'configuration':<50}{'naive items/s':>14}{'optimised':>11}{'speedup':>9}{'TFLOP/step':>12}"
          f"{'TFLOP/s':>9}{'MFU':>7}")  # fmt: skip
    for row in rows:
        mfu = f"{row['mfu_optimised']:.1%}" if row["mfu_optimised"] is not None else "-"
        print(f"{row['config']:<50}{row['items_per_s_naive']:>14,.0f}{row['items_per_s_optimised']:>11,.0f}"
              f"{row['speedup']:>8.2f}x{row['work_tflop_per_step_optimised']:>12.3f}"
              f"{row['achieved_tflops_optimised']:>9.1f}{mfu:>7}")  # fmt: skip
    print(f"bf16 torch.mm 8192^3 in this run: {mm:.1f} TFLOP/s; datasheet bf16 dense peak: {peak} TFLOP/s")
    for row in rows:
        # Process CPU time is no guide here: CUDA synchronisation spins, so it equals wall time even when idle.
        print(f"\n{row['config']}: step {row['step_ms_optimised']:.1f} ms (naive {row['step_ms_naive']:.1f} ms)")
        for label, key in (("device", "profile_optimised_step"), ("host", "host_profile_optimised_step")):
            print(f"where the optimised step's {label} time goes:")
            for op in row[key]:
                print(f"  {op['share']:6.1%} {op['self_ms']:8.2f} ms  {op['op'][:90]}")
        print("Python functions with the most own time in that step (cProfile):")
        for function in row["python_profile_optimised_step"]:
            print(f"  {function['own_ms']:8.2f} ms own {function['cumulative_ms']:8.2f} ms cumulative "
                  f"{function['calls']:>6} calls  {function['function'][:80]}")  # fmt: skip
    figures = {
        "benchmark": "gpu_train_step",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device_name,
        "torch": torch.__version__,
        "autocast": str(dtype),
        "cudnn_attention": not args.no_cudnn_attention,
        "peak_bf16_tflops_datasheet": peak,
        "mm_tflops_measured": mm,
        "configs": rows,
        "wall_s": time.perf_counter() - started,
    }
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
