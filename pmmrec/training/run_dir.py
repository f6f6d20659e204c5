"""The run folder: its lock, its log, its saved config, and resumable checkpoints.

A run folder holds config.yaml (the resolved options), log.jsonl (one JSON record per step and evaluation),
checkpoints/last (weights in safetensors, less the frozen ones, which frozen.json names and fingerprints; optimizer,
scheduler and RNG in a weights-only torch file; progress in JSON), best/ (the best model so far) and, at the end,
summary.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pmmrec.distributed import DistributedContext, barrier, gather_objects
from pmmrec.errors import ArtefactError, ConfigError
from pmmrec.fileio import WriteError, atomic_directory, atomic_file, follow_umask
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover, recover_children
from pmmrec.schemas import FrozenFile, ProgressFile
from pmmrec.training.config import mode_defaults
from pmmrec.training.config_loading import load_train_config

WEIGHTS = "training_module.safetensors"
STATE = "trainer_state.pt"
META = "progress.json"
FROZEN = "frozen.json"  # the frozen parameters a checkpoint leaves out: their names and one sha256 of their values


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


def frozen_parameters(module: nn.Module) -> dict[str, Any] | None:
    """The module's frozen parameters (requires_grad false: training never changes them) as a checkpoint records
    them instead of their bytes: their names and a sha256 of each one's name, dtype, shape and values; None when
    every parameter trains. A frozen text backbone is most of a checkpoint's bytes (91 of 108 MB for MiniLM)."""
    names = sorted(name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad)
    if not names:
        return None
    state = module.state_dict(keep_vars=True)
    digest = hashlib.sha256()
    for name in names:
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return {"names": names, "sha256": digest.hexdigest()}


def save_checkpoint(
    folder: Path,
    module: nn.Module,
    trainer_state: dict[str, Any],
    progress: dict[str, Any],
    frozen: dict[str, Any] | None = None,
) -> None:
    """Write weights, trainer state and progress into `folder`, replacing the previous checkpoint atomically.

    `frozen` (`frozen_parameters(module)`, taken when the run started): those weights are left out and recorded in
    frozen.json; a resume rebuilds them from the run's components and checks them against it."""
    left_out = set(frozen["names"]) if frozen else set()
    with atomic_directory(folder, overwrite=True) as staging:
        tensors = {
            name: t.detach().contiguous().cpu() for name, t in module.state_dict().items() if name not in left_out
        }
        save_file(tensors, str(staging / WEIGHTS))
        follow_umask(staging / WEIGHTS)  # safetensors creates its files 0600
        torch.save(trainer_state, staging / STATE)
        (staging / META).write_text(json.dumps(progress, indent=2) + "\n", encoding="utf-8")
        if frozen:
            (staging / FROZEN).write_text(json.dumps(frozen, indent=1) + "\n", encoding="utf-8")


def _left_out(folder: Path, module: nn.Module, frozen: dict[str, Any] | None) -> set[str]:
    """The weights the checkpoint in `folder` left out (frozen.json; none in a checkpoint written before it), once
    they are known to be this module's own: the same names and values."""
    if not os.path.lexists(folder / FROZEN):
        return set()
    recorded = read_json_file(folder / FROZEN, error=ArtefactError)
    validate_strictly(FrozenFile, recorded, str(folder / FROZEN), error=ArtefactError)
    current = frozen if frozen is not None else frozen_parameters(module)
    if current != recorded:
        ours = "none" if current is None else f"{len(current['names'])}, sha256 {current['sha256'][:12]}"
        raise ArtefactError(
            f"{folder / FROZEN}: the checkpoint's frozen weights ({len(recorded['names'])}, sha256 "
            f"{recorded['sha256'][:12]}) are not this run's ({ours}); resume with the same components and options"
        )
    return set(recorded["names"])


def load_checkpoint(
    folder: Path, module: nn.Module, map_location: str | torch.device = "cpu", frozen: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore module weights; return (trainer_state, progress). Only complete checkpoints exist on disk. The
    weights it left out (frozen.json) stay the module's own, checked against it first (`frozen`: the module's
    `frozen_parameters`, when already taken)."""
    recover(folder)
    for name in (WEIGHTS, STATE, META):
        if not (folder / name).is_file():
            raise ArtefactError(f"{folder / name}: missing; {folder} is not a complete checkpoint")
    left_out = _left_out(folder, module, frozen)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ArtefactError(f"{folder / WEIGHTS}: unreadable ({exc})") from None
    expected = module.state_dict().keys() - left_out
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise ArtefactError(
            f"{folder / WEIGHTS}: does not match this run's model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "resume with the same components and options"
        )
    with torch.no_grad():
        module.load_state_dict(tensors, strict=not left_out)
    try:
        state = torch.load(folder / STATE, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ArtefactError(f"{folder / STATE}: unreadable ({exc})") from None
    progress = read_json_file(folder / META, error=ArtefactError)
    validate_strictly(ProgressFile, progress, str(folder / META), error=ArtefactError)
    return state, progress


def save_last(
    folder: Path, context: DistributedContext, module: nn.Module, stateful: dict[str, Any], progress: dict[str, Any],
    frozen: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """checkpoints/last in `folder`: the module's weights, each `stateful` object's state_dict (optimizer, scheduler,
    scaler), the RNG of every rank and `progress`, less the `frozen` weights. Rank 0 writes; every rank waits."""
    # Every rank's RNG: ranks draw different amounts (dropout over their own items), so each resumes its own.
    rng_per_rank = gather_objects(context, rng_state())
    if context.is_main:
        state = {name: value.state_dict() for name, value in stateful.items()}
        save_checkpoint(folder, module, state | {"rng": rng_state(), "rng_per_rank": rng_per_rank}, progress, frozen)
    barrier(context)


def restore_last(
    folder: Path, context: DistributedContext, module: nn.Module, stateful: dict[str, Any],
    frozen: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Load what `save_last` wrote into the module and the `stateful` objects, restore this rank's RNG (rank 0's
    when the number of processes changed); returns the progress."""
    state, progress = load_checkpoint(folder, module, map_location="cpu", frozen=frozen)
    for name, value in stateful.items():
        value.load_state_dict(state[name])
    per_rank = state.get("rng_per_rank")
    same_world = isinstance(per_rank, list) and len(per_rank) == context.world_size
    restore_rng_state(per_rank[context.rank] if same_world else state["rng"])
    return progress


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


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive lock on RUN/.lock for this process's lifetime: a second writer of RUN is refused.

    flock is released by the kernel when the process dies, so a killed run never leaves a stale lock.
    """
    import fcntl

    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{run_dir} is being written by another pmmrec process; wait for it or use another --out") from None
    return handle



def fresh_progress() -> dict[str, Any]:
    """Progress of a run that has not trained yet."""
    return {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best": None,
        "best_epoch": None,
        "stale_epochs": 0,
        "history": [],
    }


def check_run_folder(run_dir: Path, resume: bool, config_text: str | None = None) -> bool:
    """Refuse a run folder this run cannot use, before anything is loaded; True when the run will resume.

    A new run needs a missing or empty folder; `resume` needs a pmmrec run there and, given the run's options
    (`config_text`), the same options as its saved config.yaml.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: is a file, not a run folder")
    leftovers = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) if run_dir.is_dir() else []
    config_path = run_dir / "config.yaml"
    if leftovers and not resume:
        raise ConfigError(f"{run_dir} is not empty ({', '.join(leftovers[:4])}); use --resume or another --out")
    if leftovers and resume and not config_path.is_file():
        raise ConfigError(f"--resume: {run_dir} holds {', '.join(leftovers[:4])} but no pmmrec run")
    if resume and config_text is not None:
        added = check_same_options(config_path, config_text)
        if added and os.environ.get("RANK", "0") == "0":
            tqdm.write(
                f"notice: {config_path} was written before {len(added)} option(s) existed "
                f"({', '.join(added[:4])}{', ...' if len(added) > 4 else ''}); the run resumes with their defaults"
            )
    return resume and (run_dir / "checkpoints" / "last").is_dir()


def check_same_options(config_path: Path, config_text: str) -> list[str]:
    """A resumed run must have the options its saved config.yaml records (when there is one).

    Options added to pmmrec after the file was written are absent from it: at their defaults they change nothing the
    run did, so they are let through (and returned, for a notice); given another value, they are refused like any
    changed option.
    """
    if not config_path.is_file():
        return []
    saved_text = config_path.read_text(encoding="utf-8")
    if saved_text == config_text:
        return []
    saved, current = _flat_config(saved_text), _flat_config(config_text)
    added = _added_at_default(saved, current)
    keys = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key) and key not in added)
    changed = [f"{key} ({saved.get(key)!r} -> {current.get(key)!r})" for key in keys] if saved else ["its text"]
    if changed:
        more = [f"... ({len(changed)} in all)"] if len(changed) > 8 else []
        raise ConfigError(
            f"--resume: {config_path} differs from this run's options in {', '.join(changed[:8] + more)}; resume with "
            "the same options"
        )
    return added


def _flat_config(text: str) -> dict[str, Any]:
    """A saved config as dotted keys; empty when the text is not a YAML mapping (nothing then counts as the same)."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return flatten(loaded) if isinstance(loaded, dict) else {}


def _added_at_default(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of `current` that `saved` lacks and whose value is their default (under the saved run's mode and the full
    recipe: the defaults of every run written before an option existed)."""
    if not saved:
        return []
    mode = saved.get("mode") if saved.get("mode") in ("pretrain", "finetune") else "finetune"
    defaults = flatten(load_train_config({**mode_defaults(mode), "recipe": "full"}).model_dump(mode="json"))
    return [key for key, value in current.items() if key not in saved and key in defaults and value == defaults[key]]


class RunFolder:
    """One run's folder, shared by every process of the run; only rank 0 writes."""

    def __init__(self, run_dir: Path, context: DistributedContext) -> None:
        self.run_dir = Path(run_dir)
        self.context = context
        self._lock: IO[str] | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    def open(self, config_text: str, resume: bool) -> bool:
        """Lock the folder and record the run's options; True when a checkpoint is there to resume from.

        A new run needs an empty folder; `resume` needs the same options as the saved config.yaml. A run killed
        before its first complete checkpoint starts over in the same folder.
        """
        if self.context.is_main:
            check_run_folder(self.run_dir, resume)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = lock_run_dir(self.run_dir)
            remove_stale_staging(self.run_dir)
        barrier(self.context)
        if resume:
            check_same_options(self.config_path, config_text)
        if resume and self.last_checkpoint.is_dir():
            return True
        if self.context.is_main:
            if resume:
                tqdm.write(f"notice: {self.last_checkpoint} does not exist yet; starting the run from the beginning")
                self.log_path.unlink(missing_ok=True)
            with atomic_file(self.config_path) as handle:
                handle.write(config_text)
        barrier(self.context)
        return False

    def close(self) -> None:
        """Release the lock (the kernel also releases it when the process dies)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to log.jsonl (rank 0 only)."""
        if not self.context.is_main:
            return
        try:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: one line naming the file, like every other write
            raise WriteError(f"could not write {self.log_path}: {exc.strerror or exc}") from exc

    def truncate_log(self, progress: dict[str, Any]) -> None:
        """Drop log records written after the checkpoint (by a run killed later), so no step appears twice."""
        if not self.context.is_main or not self.log_path.is_file():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("event") == "step" and record.get("step", 0) > progress["global_step"]:
                continue
            if record.get("event") == "eval" and (record.get("epoch") or 0) > progress["epoch"]:
                continue
            if record.get("split") == "test":
                continue  # logged once at the end of the run, which the resumed run reaches again
            kept.append(line)
        with atomic_file(self.log_path) as handle:
            handle.write("".join(f"{line}\n" for line in kept))


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
