"""One training loop for pretrain and finetune: objectives, AdamW groups, AMP, DDP, checkpoints, early stopping."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pmmrec.data import BatchCollator, Dataset, LeaveOneOutSplit, SequenceBatch, TrainSequences, leave_one_out
from pmmrec.errors import ConfigError, PmmrecError
from pmmrec.evaluation import format_metrics_table
from pmmrec.fileio import WriteError, atomic_file, write_json
from pmmrec.inference import EvaluationResult, encode_catalogue, evaluate_split, make_collator
from pmmrec.model import ItemEncoding, PMMRec
from pmmrec.objectives import NextItemLoss, NICLLoss, NIDLoss, RCLLoss, corrupt_slots, log_popularity_from_counts
from pmmrec.training import checkpoint as ckpt
from pmmrec.training.config import TrainConfig, dump_train_config
from pmmrec.training.determinism import deterministic_mode
from pmmrec.training.distributed import (
    DistributedContext,
    all_reduce_flag,
    barrier,
    gather_objects,
    setup_distributed,
)
from pmmrec.training.prefix_cache import FrozenPrefixCache

NO_DECAY_MARKERS = ("bias", "norm", "embedding", "positions", "type_embeddings")


class TrainingInterrupted(PmmrecError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and `--resume` continues from it."""


class TrainingModule(nn.Module):
    """The model plus the objective heads; forward(batch) returns every active loss (what DDP wraps)."""

    def __init__(self, model: PMMRec, config: TrainConfig, log_popularity: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        objectives = config.objectives
        weights = objectives.weights
        both = model.modalities == frozenset({"text", "vision"})
        if weights.nicl > 0 and not both:  # NICL is skipped (the Trainer prints a notice): drop its weight
            weights = weights.model_copy(update={"nicl": 0.0})
        self.weights = weights
        self.next_item = NextItemLoss(objectives.next_item)
        self.nicl = NICLLoss(model.dim, objectives.nicl) if weights.nicl > 0 and both else None
        self.nid = NIDLoss(model.dim, objectives.nid) if weights.nid > 0 else None
        self.rcl = RCLLoss(objectives.rcl) if weights.rcl > 0 else None
        self.corruption_rate = objectives.nid.corruption_rate
        self.register_buffer("log_popularity", log_popularity, persistent=False)
        self.gather_negatives = False
        self.prefix_cache: FrozenPrefixCache | None = None
        # Catalogue embedding table [N+1, d] used instead of encoding, when the whole item tower is frozen.
        self.item_table: torch.Tensor | None = None

    def active_losses(self) -> list[str]:
        names = ["rec"] if self.weights.rec > 0 else []
        names += [name for name in ("nicl", "nid", "rcl") if getattr(self, name) is not None]
        return names

    def forward(self, batch: SequenceBatch, corruption_seed: int) -> dict[str, torch.Tensor]:
        model = self.model
        if self.item_table is not None:  # frozen item tower: rows of this epoch's table, nothing to encode
            encoded = ItemEncoding(embeddings=self.item_table[batch.unique_items])
        else:
            text_prefix = image_prefix = None
            if self.prefix_cache is not None:
                text_prefix, image_prefix = self.prefix_cache.lookup(batch)
            encoded = model.encode_items(
                batch.text_ids,
                batch.text_mask,
                batch.pixel_values,
                item_indices=batch.unique_items,
                text_prefix=text_prefix,
                image_prefix=image_prefix,
            )
        items = encoded.embeddings
        slot_embeddings = items[batch.slot_index] * batch.seq_mask.unsqueeze(-1).to(items.dtype)
        input_mask = batch.seq_mask[:, :-1]
        states = model.encode_users(slot_embeddings[:, :-1], input_mask)
        # State l predicts slot l + 1; the target slot has no successor, so its state is a zero column.
        padded_states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
        losses: dict[str, torch.Tensor] = {}
        candidates, candidate_ids = items, batch.unique_items
        if self.gather_negatives:
            candidates, candidate_ids = gather_candidates(items, batch.unique_items)
        if self.weights.rec > 0:
            losses["rec"] = self.next_item(
                padded_states, candidates, batch.slot_index, batch.seq_mask, candidate_ids, self.log_popularity
            )
        if self.nicl is not None:
            losses["nicl"] = self.nicl(encoded.text_pooled, encoded.image_pooled, batch.slot_index, batch.seq_mask)
        if self.nid is not None or self.rcl is not None:
            generator = torch.Generator(device=batch.slot_index.device).manual_seed(corruption_seed)
            inputs = batch.slot_index[:, :-1]
            corrupted, noise = corrupt_slots(inputs, input_mask, self.corruption_rate, generator)
            corrupted_embeddings = items[corrupted] * input_mask.unsqueeze(-1).to(items.dtype)
            corrupted_states = model.encode_users(corrupted_embeddings, input_mask)
            if self.nid is not None:
                losses["nid"] = self.nid(corrupted_states, noise, input_mask)
            if self.rcl is not None:
                valid = input_mask[:, -1]
                losses["rcl"] = self.rcl(states[valid, -1], corrupted_states[valid, -1])
        return losses


def item_tower_frozen(model: PMMRec) -> bool:
    """True when no parameter of the item tower (text, vision, fusion or ID tower) is trained."""
    slots = ("text", "vision", "fusion", "item_tower")
    components = [getattr(model, slot) for slot in slots if getattr(model, slot) is not None]
    return not any(parameter.requires_grad for component in components for parameter in component.parameters())


def gather_candidates(items: torch.Tensor, unique_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local batch items first, then other processes' items not in this batch (gradients flow back to them)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=items.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([items.shape[0]], device=items.device))
    longest = int(max(s.item() for s in sizes))
    padded_items = torch.cat([items, items.new_zeros(longest - items.shape[0], items.shape[1])])
    padded_ids = torch.cat([unique_items, unique_items.new_zeros(longest - unique_items.shape[0])])
    all_items = dist_fn.all_gather(padded_items)
    all_ids = [torch.zeros_like(padded_ids) for _ in range(world)]
    dist.all_gather(all_ids, padded_ids)
    rank = dist.get_rank()
    extra_items, extra_ids = [], []
    seen = unique_items
    for other in range(world):
        if other == rank:
            continue
        count = int(sizes[other].item())
        ids = all_ids[other][:count]
        keep = ~torch.isin(ids, seen)
        extra_items.append(all_items[other][:count][keep])
        extra_ids.append(ids[keep])
        seen = torch.cat([seen, ids[keep]])
    return torch.cat([items, *extra_items]), torch.cat([unique_items, *extra_ids])


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    best_epoch: int | None
    best_valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: PMMRec | None = None


def parameter_groups(module: TrainingModule, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups per slot (own lr) x decay/no-decay; frozen slots and frozen parameters excluded."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    slots = module.model.components()
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        parts = name.split(".")
        slot = parts[1] if parts[0] == "model" and parts[1] in slots else "objectives"
        if slot in config.freeze:
            continue
        decay = parameter.ndim >= 2 and not any(marker in name.lower() for marker in NO_DECAY_MARKERS)
        groups.setdefault((slot, decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": config.lr_for(slot) if slot != "objectives" else config.lr,
            "weight_decay": config.weight_decay if decay else 0.0,
            "slot": slot,
        }
        for (slot, decay), params in sorted(groups.items())
    ]


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


def epoch_order(num_users: int, epoch: int, seed: int, context: DistributedContext) -> list[int]:
    """This process's users for `epoch`: a seeded permutation, padded to equal shards as DistributedSampler does."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_users, generator=generator).tolist()
    world = context.world_size
    padded = order + order[: (-len(order)) % world]
    return padded[context.rank :: world]


class _StopFlag:
    """Records SIGTERM/SIGINT instead of dying mid-step; restored on exit."""

    def __init__(self) -> None:
        self.raised: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            previous = {}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.raised = signum


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


class Trainer:
    """Runs one training job end to end; see `train`."""

    def __init__(
        self,
        model: PMMRec,
        dataset: Dataset,
        config: TrainConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.context = setup_distributed(config.device)
        self.device = self.context.device
        torch.manual_seed(config.seed)
        self.split: LeaveOneOutSplit = leave_one_out(dataset.sequences, config.min_length, config.max_history)
        if self.split.num_users == 0:
            raise ConfigError(f"{dataset.root}: no user has at least {config.min_length} interactions")
        if model.max_length < config.max_length:
            raise ConfigError(
                f"--max-length {config.max_length} exceeds the user encoder's max_length {model.max_length}"
            )
        for slot in config.freeze:
            component = getattr(model, slot, None)
            if component is None:
                raise ConfigError(f"--freeze {slot}: the model has no {slot} component")
            component.requires_grad_(False)
        self.model = model.to(self.device)
        self.collator: BatchCollator = make_collator(model, dataset)
        counts = torch.zeros(dataset.num_items + 1)
        for sequence in self.split.train:
            counts += torch.bincount(torch.as_tensor(sequence), minlength=dataset.num_items + 1).float()
        self.module = TrainingModule(model, config, log_popularity_from_counts(counts)).to(self.device)
        self.module.gather_negatives = config.gather_negatives and self.context.enabled
        self.notices: list[str] = []
        if config.objectives.weights.nicl > 0 and self.module.nicl is None:
            self.notices.append("NICL skipped: it needs both a text and a vision encoder")
        if config.cache_frozen:
            self.module.prefix_cache = FrozenPrefixCache.for_model(model, self.collator, self.device)
            if self.module.prefix_cache is not None and self.module.prefix_cache.caches_image:
                self.collator.include_images = False  # the cache already holds every image's frozen prefix
        # A frozen item tower (NICL off: it needs per-modality states) is encoded once per epoch into a table.
        self.table_per_epoch = item_tower_frozen(model) and self.module.nicl is None
        self.data_wait_s = self.step_time_s = 0.0  # time waiting for the DataLoader / whole steps, this process
        self.wrapped: nn.Module = self.module
        if self.context.enabled:
            self.wrapped = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.train_set = TrainSequences(self.split.train, config.max_length)
        self.steps_per_epoch = math.ceil(len(epoch_order(len(self.train_set), 0, 0, self.context)) / config.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        groups = parameter_groups(self.module, config)
        if not groups:
            raise ConfigError("nothing to train: every component is frozen")
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.total_steps))
        self.autocast_dtype, use_scaler = autocast_settings(config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    # ---- paths ----------------------------------------------------------------------------------

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    def _log(self, record: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        path = self.run_dir / "log.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: one line naming the file, like every other write
            raise WriteError(f"could not write {path}: {exc.strerror or exc}") from exc

    # ---- state ----------------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def _save_last(self, progress: dict[str, Any]) -> None:
        # Every rank's RNG: ranks draw different amounts (dropout over their own items), so each resumes its own.
        rng_per_rank = gather_objects(self.context, ckpt.rng_state())
        if self.context.is_main:
            state = self._trainer_state() | {"rng_per_rank": rng_per_rank}
            ckpt.save_checkpoint(self.last_checkpoint, self.module, state, progress)
        barrier(self.context)

    def _restore(self) -> dict[str, Any]:
        state, progress = ckpt.load_checkpoint(self.last_checkpoint, self.module, map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        same_world = isinstance(per_rank, list) and len(per_rank) == self.context.world_size
        ckpt.restore_rng_state(per_rank[self.context.rank] if same_world else state["rng"])
        if self.context.is_main:
            self._truncate_log(progress)
        return progress

    def _truncate_log(self, progress: dict[str, Any]) -> None:
        """Drop log records written after the checkpoint (by a run killed later), so no step appears twice."""
        path = self.run_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
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
        with atomic_file(path) as handle:
            handle.write("".join(f"{line}\n" for line in kept))

    def _prepare_run_dir(self) -> dict[str, Any]:
        fresh = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best": None,
            "best_epoch": None,
            "stale_epochs": 0,
            "history": [],
        }
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            leftovers = [p.name for p in self.run_dir.iterdir() if not p.name.startswith(".")]
            if leftovers and not self.resume:
                raise ConfigError(
                    f"{self.run_dir} is not empty ({', '.join(sorted(leftovers)[:4])}); use --resume or another --out"
                )
            if leftovers and self.resume and not (self.run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume: {self.run_dir} holds {', '.join(sorted(leftovers)[:4])} but no pmmrec run")
            self._lock = lock_run_dir(self.run_dir)
            ckpt.remove_stale_staging(self.run_dir)
        barrier(self.context)
        saved_config = self.run_dir / "config.yaml"
        if self.resume and not self.last_checkpoint.is_dir():
            # Killed before its first checkpoint was complete: start over in the same folder.
            if saved_config.is_file() and saved_config.read_text(encoding="utf-8") != dump_train_config(self.config):
                raise ConfigError(f"--resume: {saved_config} differs from this run's options")
            if self.context.is_main:
                tqdm.write(f"notice: {self.last_checkpoint} does not exist yet; starting the run from the beginning")
                (self.run_dir / "log.jsonl").unlink(missing_ok=True)
                with atomic_file(saved_config) as handle:
                    handle.write(dump_train_config(self.config))
            barrier(self.context)
            return fresh
        if self.resume:
            saved = (
                (self.run_dir / "config.yaml").read_text(encoding="utf-8")
                if (self.run_dir / "config.yaml").is_file()
                else None
            )
            if saved is not None and saved != dump_train_config(self.config):
                raise ConfigError(
                    f"--resume: {self.run_dir / 'config.yaml'} differs from this run's options; resume with the same options"
                )
            return self._restore()
        if self.context.is_main:
            with atomic_file(self.run_dir / "config.yaml") as handle:
                handle.write(dump_train_config(self.config))
        barrier(self.context)
        return fresh

    # ---- steps ------------------------------------------------------------------------------------

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        order = epoch_order(len(self.train_set), epoch, self.config.seed, self.context)
        order = order[skip_batches * self.config.batch_size :]
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=order,
            collate_fn=self.collator.sequences_only if self.table_per_epoch else self.collator,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator(),
        )

    def _step(self, batch: SequenceBatch, global_step: int) -> dict[str, float]:
        batch = batch.to(self.device, non_blocking=True)
        seed = self.config.seed * 7_919 + global_step * max(self.context.world_size, 1) + self.context.rank
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            losses = self.wrapped(batch, seed)
            total = self.module.weights.combine(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": float(total.detach()), **{name: float(value.detach()) for name, value in losses.items()}}

    def _item_table(self) -> torch.Tensor:
        """The catalogue embedding table [N+1, d] of the current model (eval mode, cached prefixes if any)."""
        if self.module.prefix_cache is not None:
            return self.module.prefix_cache.item_table(self.model, batch_size=self.config.item_batch_size)
        return encode_catalogue(
            self.model, self.collator, self.dataset.num_items, self.device, self.config.item_batch_size
        )

    def _evaluate(self, which: str) -> EvaluationResult:
        if self.module.item_table is not None and self.model is self.module.model:
            table = self.module.item_table  # frozen item tower: this epoch's table is still exact
        else:
            table = self.module.prefix_cache.item_table(self.model) if self.module.prefix_cache is not None else None
        return evaluate_split(
            self.model,
            self.split,
            which,
            self.collator,
            self.dataset.num_items,
            self.device,
            self.context,
            ks=self.config.ks,
            batch_size=self.config.eval_batch_size,
            item_batch_size=self.config.item_batch_size,
            item_table=table,
        )

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train, evaluate, test; the run folder is locked against other writers meanwhile."""
        self._lock: Any = None
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.close()

    def _run(self) -> TrainResult:
        progress = self._prepare_run_dir()
        if self.context.is_main:
            for notice in self.notices:
                tqdm.write(f"notice: {notice}")
        stop = _StopFlag()
        config = self.config
        with stop.installed():
            while progress["epoch"] < config.epochs and not self._done(progress):
                epoch = progress["epoch"]
                self.model.train()
                if self.table_per_epoch:
                    self.module.item_table = self._item_table()
                loader = self._loader(epoch, progress["step_in_epoch"])
                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=progress["step_in_epoch"],
                    desc=f"{config.mode} epoch {epoch + 1}/{config.epochs}",
                    disable=not (self.progress and self.context.is_main),
                    dynamic_ncols=True,
                )
                started, items_seen = time.perf_counter(), 0
                mark = started  # end of the previous step: from here to a batch's arrival is data wait
                for batch in loader:
                    data_wait = time.perf_counter() - mark
                    if all_reduce_flag(self.context, stop.raised is not None):
                        self._save_last(progress)
                        bar.close()
                        raise TrainingInterrupted(
                            f"stopped by a signal at epoch {epoch + 1}, step {progress['step_in_epoch']}; "
                            f"checkpoint in {self.last_checkpoint}; continue with --resume"
                        )
                    values = self._step(batch, progress["global_step"])
                    items_seen += int(batch.seq_mask.sum())
                    progress["step_in_epoch"] += 1
                    progress["global_step"] += 1
                    now = time.perf_counter()
                    step_seconds = now - mark
                    self.data_wait_s += data_wait
                    self.step_time_s += step_seconds
                    rate = items_seen * self.context.world_size / max(now - started, 1e-9)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", items_s=f"{rate:,.0f}")
                    bar.update(1)
                    self._log(
                        {
                            "event": "step",
                            "epoch": epoch + 1,
                            "step": progress["global_step"],
                            **values,
                            "items_per_s": rate,
                            "data_wait_s": data_wait,
                            "step_s": step_seconds,
                        }
                    )
                    mark = time.perf_counter()
                    if self._done(progress):
                        break
                bar.close()
                self._end_epoch(progress, epoch, time.perf_counter() - started)
                if config.patience is not None and progress["stale_epochs"] >= config.patience:
                    if self.context.is_main:
                        tqdm.write(f"early stopping: no better {config.select_metric} for {config.patience} epochs")
                    break
        return self._finish(progress)

    def _done(self, progress: dict[str, Any]) -> bool:
        return self.config.max_steps is not None and progress["global_step"] >= self.config.max_steps

    def _end_epoch(self, progress: dict[str, Any], epoch: int, seconds: float) -> None:
        result = self._evaluate("valid")
        score = result.metrics[self.config.select_metric]
        improved = progress["best"] is None or score > progress["best"]
        record = {"event": "eval", "split": "valid", "epoch": epoch + 1, "seconds": seconds, **result.metrics}
        self._log(record)
        progress["history"].append(record)
        if improved:
            progress["best"], progress["best_epoch"], progress["stale_epochs"] = score, epoch + 1, 0
            if self.context.is_main:
                self.model.save_pretrained(self.best_dir, overwrite=True)
        else:
            progress["stale_epochs"] += 1
        if self.context.is_main:
            tqdm.write(
                f"epoch {epoch + 1}: valid {self.config.select_metric} = {score:.4f}"
                + (" (best)" if improved else f" (best {progress['best']:.4f} at epoch {progress['best_epoch']})")
            )
        progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
        self._save_last(progress)

    def _finish(self, progress: dict[str, Any]) -> TrainResult:
        if progress["best_epoch"] is not None and not self.best_dir.is_dir():
            # Rank 0 wrote it: a rank that cannot see it would test another model than the best one.
            raise ConfigError(
                f"{self.best_dir}: missing on rank {self.context.rank}; "
                "with several nodes, --out must be on a filesystem that every node shares"
            )
        best_model = PMMRec.from_pretrained(self.best_dir) if self.best_dir.is_dir() else self.model
        best_model.sources = self.model.sources
        best_model.to(self.device)
        self.model = best_model
        test = self._evaluate("test")
        valid_best = next((h for h in progress["history"] if h["epoch"] == progress["best_epoch"]), {})
        valid_metrics = {k: v for k, v in valid_best.items() if "@" in k}
        summary = {
            "mode": self.config.mode,
            "dataset": self.dataset.name,
            "users": self.split.num_users,
            "items": self.dataset.num_items,
            "world_size": self.context.world_size,
            "gather_negatives": self.module.gather_negatives,
            "objectives": self.module.active_losses(),
            "best_epoch": progress["best_epoch"],
            "valid": valid_metrics,
            "test": test.metrics,
            "history": progress["history"],
            "steps": progress["global_step"],
            # Share of training-step wall time (this process, this invocation) spent waiting for the DataLoader.
            "data_wait_share": self.data_wait_s / self.step_time_s if self.step_time_s > 0 else None,
            "data_wait_s": self.data_wait_s,
        }
        self._log({"event": "eval", "split": "test", "epoch": progress["best_epoch"], **test.metrics})
        if self.context.is_main:
            write_json(self.run_dir / "summary.json", summary)
            tqdm.write(
                f"test at the best epoch ({progress['best_epoch']}):\n"
                + format_metrics_table(test.metrics, self.config.ks)
            )
        barrier(self.context)
        return TrainResult(
            run_dir=self.run_dir,
            best_epoch=progress["best_epoch"],
            best_valid=valid_metrics,
            test=test.metrics,
            history=progress["history"],
            model=best_model,
        )


def train(
    model: PMMRec,
    dataset: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `dataset`; valid after each epoch, best by NDCG@10, test once at the best epoch."""
    with deterministic_mode(config.deterministic):  # before the Trainer: it already computes cached prefixes
        trainer = Trainer(model, dataset, config, Path(run_dir), resume=resume, progress=progress)
        return trainer.run()
