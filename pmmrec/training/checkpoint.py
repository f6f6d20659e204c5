"""Resumable trainer state: weights in safetensors, optimizer/scheduler/RNG in a weights-only torch file."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pmmrec.errors import ArtefactError
from pmmrec.fileio import atomic_directory
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover, recover_children
from pmmrec.schemas import ProgressFile

WEIGHTS = "training_module.safetensors"
STATE = "trainer_state.pt"
META = "progress.json"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    module: nn.Module,
    trainer_state: dict[str, Any],
    progress: dict[str, Any],
) -> None:
    """Write weights, trainer state and progress into `folder`, replacing the previous checkpoint atomically."""
    with atomic_directory(folder, overwrite=True) as staging:
        tensors = {name: t.detach().contiguous().cpu() for name, t in module.state_dict().items()}
        save_file(tensors, str(staging / WEIGHTS))
        torch.save(trainer_state, staging / STATE)
        (staging / META).write_text(json.dumps(progress, indent=2) + "\n", encoding="utf-8")


def load_checkpoint(
    folder: Path, module: nn.Module, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore module weights; return (trainer_state, progress). Only complete checkpoints exist on disk."""
    recover(folder)
    for name in (WEIGHTS, STATE, META):
        if not (folder / name).is_file():
            raise ArtefactError(f"{folder / name}: missing; {folder} is not a complete checkpoint")
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ArtefactError(f"{folder / WEIGHTS}: unreadable ({exc})") from None
    expected = module.state_dict().keys()
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise ArtefactError(
            f"{folder / WEIGHTS}: does not match this run's model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "resume with the same components and options"
        )
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)
    try:
        state = torch.load(folder / STATE, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ArtefactError(f"{folder / STATE}: unreadable ({exc})") from None
    progress = read_json_file(folder / META, error=ArtefactError)
    validate_strictly(ProgressFile, progress, str(folder / META), error=ArtefactError)
    return state, progress


def remove_stale_staging(run_dir: Path) -> None:
    """Finish or roll back replacements interrupted by a kill (checkpoints/last, best, model, components/*), then
    delete temporary files left by killed writes; the caller holds the run folder's lock, so none is in use."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "components"):
        if folder.is_dir():
            recover_children(folder)
    for path in run_dir.glob(".*.tmp"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for path in (run_dir / "checkpoints").glob(".*.tmp") if (run_dir / "checkpoints").is_dir() else []:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
