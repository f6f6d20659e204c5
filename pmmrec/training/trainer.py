"""One training loop for pretrain and finetune: objectives, AdamW groups, AMP, DDP, checkpoints, early stopping."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pmmrec.data import Dataset, LeaveOneOutSplit, SequenceBatch, dataset_fingerprint
from pmmrec.distributed import all_reduce_flag, barrier, setup_distributed, wrap_for_processes
from pmmrec.errors import ConfigError, Interrupted
from pmmrec.inference import EvaluationResult, encode_catalogue, evaluate_split
from pmmrec.model import PMMRec
from pmmrec.progress import bar_disable
from pmmrec.training.config import TrainConfig
from pmmrec.training.config_yaml import dump_train_config
from pmmrec.training.control import StopFlag, epoch_order
from pmmrec.training.module import item_tower_frozen
from pmmrec.training.optim import adamw, autocast_settings, lr_lambda, parameter_groups, slot_learning_rates
from pmmrec.training.outcome import RunFacts, TrainResult, best_validation, run_summary, write_outcome
from pmmrec.training.progress import epoch_line, epochs_text, plan_line, run_clock, start_lines, time_lines
from pmmrec.training.reporting import Reporters
from pmmrec.training.run_dir import RunFolder, fresh_progress, frozen_parameters, restore_last, save_last
from pmmrec.training.setup import freeze_and_check, run_data, training_module
from pmmrec.training.stale_items import check_stale_layers, reads_text_table, stale_text_layers

ANNOUNCE_AFTER_STEPS = 4  # the time a run will take is printed once this many steps were measured


class TrainingInterrupted(Interrupted):
    """SIGTERM/SIGINT arrived; a checkpoint was written and `--resume` continues from it."""


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
        config_file: str | None = None,
        announced: bool = False,
        refit_epochs: int | None = None,
    ) -> None:
        self.config = config
        # A refit (`config.refit`, after the run that chose its epoch count): trains `refit_epochs` epochs on the
        # validation targets too, with the schedule of the run it repeats, validates nothing and keeps its last epoch.
        self.refit_epochs = refit_epochs
        self.epochs = refit_epochs if refit_epochs is not None else config.epoch_limit
        self.config_file = config_file
        self.announced = announced  # the run's first lines were printed already (`jobs.announce_run`)
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.context = setup_distributed(config.device)
        self.folder = RunFolder(self.run_dir, self.context)
        self.device = self.context.device
        # What a model folder of this run records: how the data was split and which dataset it was.
        self.split_record = {**config.split_record(), "dataset": dataset_fingerprint(dataset)}
        if refit_epochs is not None:
            self.split_record["valid_targets_trained"] = True
        torch.manual_seed(config.seed)
        data = run_data(dataset, config, valid_targets=refit_epochs is not None)
        self.split: LeaveOneOutSplit = data.split
        self.train_rows, self.known_items, self.train_set = data.train_rows, data.known_items, data.train_set
        freeze_and_check(model, config)
        self.model = model.to(self.device)
        model.bind_catalogue(dataset.item_ids)
        self.autocast_dtype, use_scaler = autocast_settings(config, self.device)
        # Before the frozen-prefix cache is built (minutes for a real backbone): a refused option fails at once.
        check_stale_layers(config.tower_update_every, model, processes=self.context.world_size, scaled=use_scaler)
        if model.item_tower is not None:
            model.item_tower.train_only(torch.from_numpy(self.known_items))
        self.module, self.collator = training_module(
            model, dataset, config, data, self.device, distributed=self.context.enabled
        )
        # A skipped objective is announced where a user could expect it: its weight was given, or the data has
        # images. A text-only run on text-only data, where it cannot apply (the demo, the README), stays quiet.
        self.notices = [notice for _, notice, given in self.module.skipped if given or dataset.images_path is not None]
        # A frozen item tower (no objective reading per-modality states) is encoded once per epoch into a table.
        self.table_per_epoch = item_tower_frozen(model) and not self.module.reads_item_states
        self.reads_text_table = reads_text_table(model, config.tower_update_every, processes=self.context.world_size,
                                                 scaled=use_scaler, reads_item_states=self.module.reads_item_states)  # fmt: skip
        self.data_wait_s = self.step_time_s = 0.0  # time waiting for the DataLoader / whole steps, this process
        self.wrapped = wrap_for_processes(self.module, self.context)
        order = epoch_order(len(self.train_set), 0, 0, self.context, config.passes_per_epoch)
        self.steps_per_epoch = math.ceil(len(order) / config.batch_size)
        schedule, self.clock = run_clock(config, self.steps_per_epoch, refit_epochs)
        self.total_steps = self.clock.total_steps
        # with a refit, the refit's model is the one tested
        self.tests = config.evaluate_test and (refit_epochs is not None or not config.refit)
        groups = parameter_groups(self.module, config)
        if not groups:
            raise ConfigError("nothing to train: every component is frozen")
        self.facts = RunFacts(
            world_size=self.context.world_size,
            gather_negatives=self.module.gather_negatives,
            objectives=self.module.active_losses(),
            skipped_objectives=[name for name, _, _ in self.module.skipped],
            softmax=self.module.options["next_item"].softmax,
            known_items=len(self.known_items),
            learning_rates=slot_learning_rates(self.module, config) | {group["slot"]: group["lr"] for group in groups},
            train_windows=len(self.train_set),
            train_users=len(self.train_rows),
        )
        self.optimizer = adamw(groups, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, schedule))
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.frozen = frozen_parameters(self.module)  # what checkpoints leave out (training never changes it)

    # ---- state ----------------------------------------------------------------------------------

    def _stateful(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    def _save_last(self, progress: dict[str, Any]) -> None:
        save_last(self.folder.last_checkpoint, self.context, self.module, self._stateful(), progress, self.frozen)

    def _restore(self) -> dict[str, Any]:
        progress = restore_last(self.folder.last_checkpoint, self.context, self.module, self._stateful(), self.frozen)
        self.folder.truncate_log(progress)
        return progress

    # ---- steps ------------------------------------------------------------------------------------

    def _loader(self, epoch: int, skip_batches: int) -> torch.utils.data.DataLoader:
        self.train_set.set_epoch(epoch)
        order = epoch_order(len(self.train_set), epoch, self.config.seed, self.context, self.config.passes_per_epoch)
        order = order[skip_batches * self.config.batch_size :]
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=order,
            collate_fn=self.collator.sequences_only if self.table_per_epoch or self.reads_text_table else self.collator,
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
        stale = self.module.stale
        tower_due = stale is not None and stale.gather(global_step % self.steps_per_epoch + 1)
        if tower_due:
            stale.backpropagate()  # the tower's gradient of the last N steps (clipped on its own)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if tower_due:
            stale.refresh()
        return {"loss": float(total.detach()), **{name: float(value.detach()) for name, value in losses.items()}}

    def _flush_stale_layers(self) -> None:
        if self.module.stale is not None:
            self.module.stale.flush(self.optimizer)

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
            self.model, self.split, which, self.collator, self.dataset.num_items, self.device, self.context,
            ks=self.config.ks, batch_size=self.config.eval_batch_size, item_batch_size=self.config.item_batch_size,
            item_table=table, max_length=self.config.max_length,
        )  # fmt: skip

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train, evaluate, test; the run folder is locked against other writers meanwhile."""
        self.reporters = Reporters([], self.run_dir, {})
        try:
            return self._run()
        finally:
            self.reporters.close()
            self.folder.close()

    def _run(self) -> TrainResult:
        resuming = self.folder.open(dump_train_config(self.config), self.resume)
        progress = self._restore() if resuming else fresh_progress()
        self.reporters = Reporters(
            self.config.report_to, self.run_dir, self.config.model_dump(mode="json"), enabled=self.context.is_main
        )
        if self.context.is_main:
            if not self.announced:
                for line in start_lines(self.config, self.run_dir, resuming, self.config_file):
                    tqdm.write(line)
            windows = len(self.train_set)
            tqdm.write(plan_line(self.config, self.steps_per_epoch, windows, self.total_steps, self.refit_epochs))
            for notice in self.notices:
                tqdm.write(f"notice: {notice}")
        stop = StopFlag()
        config = self.config
        with stop.installed():
            while progress["epoch"] < self.epochs and not self._done(progress):
                epoch = progress["epoch"]
                self.model.train()
                if self.table_per_epoch:
                    self.module.item_table = self._item_table()
                if self.reads_text_table and self.module.stale is None:
                    self._start_stale_layers()
                seconds = self._train_epoch(progress, epoch, stop)
                self._flush_stale_layers()
                self._end_epoch(progress, epoch, seconds)
                last = progress["epoch"] >= config.epoch_limit  # every epoch ran: nothing was stopped early
                if config.patience is not None and progress["stale_epochs"] >= config.patience and not last:
                    if self.context.is_main:
                        tqdm.write(f"early stopping: no better {config.select_metric} for {config.patience} epochs")
                    break
        return self._finish(progress)

    def _start_stale_layers(self) -> None:
        """The table and gradient sums of `tower_update_every` (built once the model is in training mode)."""
        config = self.config
        self.module.stale = stale_text_layers(
            config.tower_update_every, self.model, self.collator, self.module.prefix_cache,
            self.dataset.num_items, self.device, steps_per_epoch=self.steps_per_epoch,
            chunk_size=config.item_batch_size, grad_clip=config.grad_clip,
        )  # fmt: skip
        self.clock.periodic(self.module.stale.steps_per_update, self.module.stale.update_seconds_estimate)

    def _train_epoch(self, progress: dict[str, Any], epoch: int, stop: StopFlag) -> float:
        """The steps of one epoch from `progress["step_in_epoch"]` (a signal stops it with a checkpoint); returns
        its seconds."""
        config = self.config
        loader = self._loader(epoch, progress["step_in_epoch"])
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=progress["step_in_epoch"],
            desc=f"{'refit' if self.refit_epochs is not None else config.mode} epoch {epoch + 1}/{self.epochs}",
            unit="step",
            disable=bar_disable(self.progress and self.context.is_main),
            dynamic_ncols=True,
        )
        started, items_seen = time.perf_counter(), 0
        mark = started  # end of the previous step: from here to a batch's arrival is data wait
        for batch in loader:
            data_wait = time.perf_counter() - mark
            if all_reduce_flag(self.context, stop.raised is not None):
                self._flush_stale_layers()
                self._save_last(progress)
                bar.close()
                raise TrainingInterrupted(
                    f"stopped by a signal at epoch {epoch + 1}, step {progress['step_in_epoch']}; "
                    f"checkpoint in {self.folder.last_checkpoint}; continue with --resume"
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
            stale = self.module.stale
            update = stale.take_update_seconds() if stale is not None else 0.0
            self.clock.step(step_seconds - update)  # an update's time goes to the clock on its own
            if stale is not None and update:
                self.clock.periodic(stale.steps_per_update, update, measured=True)
            left = self.clock.describe(progress["global_step"])
            # Throughput counts the sequence positions trained (items of users' histories), all processes.
            bar.set_postfix_str(
                f"loss {values['loss']:.4f}, {rate:,.0f} history items/s" + (f", {left}" if left else "")
            )
            if self.clock.announce_due(ANNOUNCE_AFTER_STEPS) and self.context.is_main:
                self._announce_time(progress["global_step"])
            bar.update(1)
            record = {"event": "step", "epoch": epoch + 1, "step": progress["global_step"], **values,
                      **{f"lr_{group['slot']}": group["lr"] for group in self.optimizer.param_groups},
                      "items_per_s": rate, "data_wait_s": data_wait, "step_s": step_seconds,
                      **({"update_s": update} if update else {})}  # fmt: skip
            self._log(record, progress["global_step"])
            mark = time.perf_counter()
            if self._done(progress):
                break
        bar.close()
        return time.perf_counter() - started

    def _log(self, record: dict[str, Any], step: int) -> None:
        """One record to log.jsonl (the source of truth) and to the configured trackers."""
        self.folder.log(record)
        self.reporters.record(record, step)

    def _done(self, progress: dict[str, Any]) -> bool:
        return self.config.max_steps is not None and progress["global_step"] >= self.config.max_steps

    def _announce_time(self, global_step: int) -> None:
        text = getattr(self.model, "text", None)
        layers = text.config.trainable_layers if text is not None else None
        for line in time_lines(self.clock, global_step, layers, self.device.type):
            tqdm.write(line)

    def _end_epoch(self, progress: dict[str, Any], epoch: int, seconds: float) -> None:
        evaluation_started = time.perf_counter()
        result = self._evaluate("valid")
        eval_seconds = time.perf_counter() - evaluation_started
        self.clock.validation(eval_seconds)
        score = result.metrics[self.config.select_metric]
        improved = progress["best"] is None or score > progress["best"]
        record = {
            "event": "eval", "split": "valid", "epoch": epoch + 1, "seconds": seconds, "eval_seconds": eval_seconds,
            **result.metrics,
        }  # fmt: skip
        self._log(record, progress["global_step"])
        progress["history"].append(record)
        if improved:
            progress["best"], progress["best_epoch"], progress["stale_epochs"] = score, epoch + 1, 0
            if self.context.is_main:
                self.model.save_pretrained(self.folder.best_dir, overwrite=True, split_record=self.split_record)
        else:
            progress["stale_epochs"] += 1
        if self.context.is_main:
            left = self.clock.describe(progress["global_step"])
            best = (progress["best"], progress["best_epoch"])
            tqdm.write(epoch_line(self.config, epoch + 1, score, best, (seconds, eval_seconds), left))
        progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
        if self.config.save_checkpoints:
            self._save_last(progress)

    def _chosen_model(self, progress: dict[str, Any]) -> PMMRec:
        """The model the run tests and returns: the best epoch's, read back from best/ on every rank."""
        if progress["best_epoch"] is not None and not self.folder.best_dir.is_dir():
            # Rank 0 wrote it: a rank that cannot see it would test another model than the best one.
            raise ConfigError(
                f"{self.folder.best_dir}: missing on rank {self.context.rank}; "
                "with several nodes, --out must be on a filesystem that every node shares"
            )
        best_model = PMMRec.from_pretrained(self.folder.best_dir) if self.folder.best_dir.is_dir() else self.model
        best_model.sources = self.model.sources
        return best_model.to(self.device)

    def _finish(self, progress: dict[str, Any]) -> TrainResult:
        self.model = best_model = self._chosen_model(progress)
        test = self._evaluate("test") if self.tests else None
        test_metrics = test.metrics if test is not None else {}
        summary = run_summary(
            self.config, self.dataset, self.split, self.facts, progress, test_metrics,
            (self.data_wait_s, self.step_time_s),
        )  # fmt: skip
        if test is not None:
            self._log(
                {"event": "eval", "split": "test", "epoch": progress["best_epoch"], **test_metrics},
                progress["global_step"],
            )
        if self.context.is_main:
            refit = self.refit_epochs is not None  # its test is its run's: RUN/test_ranks.json, of RUN/model
            write_outcome(
                self.run_dir, self.config, self.dataset, self.split, self.split_record["dataset"], summary, test,
                heading=f"test of the refit ({epochs_text(progress['best_epoch'])})" if refit else None,
                ranks_dir=self.run_dir.parent if refit else None,
            )  # fmt: skip
        barrier(self.context)
        return TrainResult(
            run_dir=self.run_dir,
            best_epoch=progress["best_epoch"],
            best_valid=best_validation(progress),
            test=test_metrics,
            history=progress["history"],
            model=best_model,
            test_ranks=test.ranks if test is not None else None,
            summary=summary,
        )
