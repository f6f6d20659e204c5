"""Optimiser and schedule: AdamW groups per component (own learning rate, no decay on norms, biases and
embeddings), linear warm-up then cosine or constant, and mixed-precision settings."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pmmrec.errors import ConfigError
from pmmrec.slots import FROM_SCRATCH_SLOTS
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule

NO_DECAY_MARKERS = ("bias", "norm", "embedding", "positions", "type_embeddings")
FRESH_PARTS = "_fresh"  # the group (and `lr_` log key) suffix of a slot's parameters trained at the fresh rate


def fresh_slots(module: TrainingModule) -> set[str]:
    """Slots whose weights start from scratch in this run: a user encoder, fusion or ID table created for it (not
    loaded from a reference), and the objective heads. Text and vision encoders wrap pretrained backbones."""
    fresh = {"objectives"}
    for slot in FROM_SCRATCH_SLOTS:
        source = module.model.sources.get(slot)
        if slot in module.model.components() and (source is None or source.requested is None):
            fresh.add(slot)
    return fresh


def slot_learning_rates(module: TrainingModule, config: TrainConfig) -> dict[str, float]:
    """The learning rate of every slot of the model and of the objective heads (what `parameter_groups` uses)."""
    fresh = fresh_slots(module)
    slots = [*module.model.components(), "objectives"]
    return {slot: config.lr_for(slot, slot in fresh) for slot in slots}


def parameter_groups(module: TrainingModule, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups per slot (own lr) x decay/no-decay; frozen slots and frozen parameters excluded."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    slots = module.model.components()
    rates = slot_learning_rates(module, config)
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        parts = name.split(".")
        slot = parts[1] if parts[0] == "model" and parts[1] in slots else "objectives"
        if slot in config.freeze:
            continue
        decay = parameter.ndim >= 2 and not any(marker in name.lower() for marker in NO_DECAY_MARKERS)
        prefixes = slots[slot].fresh_parameter_prefixes() if slot in slots else ()
        if prefixes and ".".join(parts[2:]).startswith(prefixes):
            group = f"{slot}{FRESH_PARTS}"  # fresh parameters of a pretrained component (word-piece embeddings)
            rates.setdefault(group, config.lr_for(slot, fresh=True))
        else:
            group = slot
        groups.setdefault((group, decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": rates[group],
            "weight_decay": config.weight_decay if decay else 0.0,
            "slot": group,
        }
        for (group, decay), params in sorted(groups.items())
    ]


FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel


def adamw(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter groups, with torch's fused kernel on CPU and CUDA: one kernel updates every parameter
    instead of a Python loop over them (benchmarks/optimizer_step.py: 2.7x faster per step on this CPU)."""
    fused = device.type in FUSED_DEVICES
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(0.9, 0.999), eps=1e-8, fused=fused)


def lr_lambda(config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up, then cosine decay to zero or constant."""

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(total_steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def autocast_settings(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None, False
    if config.precision == "bf16" or (config.precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.float16, True
