"""What a training run tells its user: where it writes and how it is configured (its first lines, as RecBole prints its
configuration), its plan, and how long it has left.

The time left is measured, not guessed: the steps left x the recent time per step, plus the validations left x the
last validation's time, plus the final test. (The earlier estimate multiplied epochs by the *training* seconds of an
epoch only; validation, about as long as an epoch's training on a CPU, was left out, so it was short by half.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pmmrec.training.config import DEFAULT_TOWER, TrainConfig, mode_defaults
from pmmrec.training.config_loading import deep_merge, load_train_config


def start_lines(config: TrainConfig, run_dir: Path, resuming: bool, config_file: str | None = None) -> list[str]:
    """The first lines of a run: its folder, then every setting that differs from the command's defaults."""
    lines = [f"run folder: {run_dir}" + (" (resuming from its last checkpoint)" if resuming else "")]
    return lines + _configuration_lines(config, run_dir, config_file) + _recipe_lines(config)


def _recipe_lines(config: TrainConfig) -> list[str]:
    """The CPU recipe, when the run trains under it (its defaults are the ones the configuration lines compare to)."""
    if config.recipe != "cpu":
        return []
    return [
        "recipe: cpu (a text run on a CPU: the text backbone frozen, word-piece embeddings trained; minutes, not the "
        "full recipe's hours, at lower quality; --recipe full trains the text layers; docs/training.md)"
    ]


def _configuration_lines(config: TrainConfig, run_dir: Path, config_file: str | None) -> list[str]:
    """Every setting that differs from the command's defaults (of the run's tower and recipe)."""
    changes = config_changes(config)
    lines: list[str] = []
    source = f", from {config_file} and flags" if config_file else ""
    if not changes:
        lines.append(f"configuration: {config.mode}'s defaults (all of it in {run_dir / 'config.yaml'})")
        return lines
    lines.append(
        f"configuration that differs from {config.mode}'s defaults{source} (all of it in {run_dir / 'config.yaml'}):"
    )
    width = max(len(path) for path in changes)
    values = {path: _value(value) for path, (value, _) in changes.items()}
    value_width = max(len(text) for text in values.values())
    lines += [
        f"  {path:<{width}}  {values[path]:<{value_width}}  (default {_value(default)})"
        for path, (_, default) in changes.items()
    ]
    return lines


def config_changes(config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Every setting of a resolved config that differs from its mode's defaults: dotted path -> (value, default),
    in the config's field order (what a run prints first, as RecBole prints its configuration). The defaults are
    those of the run's item tower (TOWER_DEFAULTS) and recipe: an ID run lists its tower, not the ID tower's own
    defaults, and a run under the CPU recipe the options that differ from the recipe's."""
    tower = config.model.item_tower
    base = deep_merge(mode_defaults(config.mode), {"model": {"item_tower": tower}, "recipe": config.recipe})
    default = load_train_config(base).model_dump(mode="json")
    default["model"]["item_tower"] = DEFAULT_TOWER
    changes: dict[str, tuple[Any, Any]] = {}

    def walk(value: Any, base: Any, prefix: str) -> None:
        if isinstance(value, dict) and isinstance(base, dict):
            for key in value:
                walk(value[key], base.get(key), f"{prefix}{key}.")
        elif value != base:
            changes[prefix.rstrip(".")] = (value, base)

    walk(config.model_dump(mode="json"), default, "")
    return changes


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "none" if value is None else str(value)


def plan_line(
    config: TrainConfig, steps_per_epoch: int, windows: int, total_steps: int, refit_epochs: int | None = None
) -> str:
    """How much the run trains: epochs x steps (windows / batch size), and when it may stop earlier; a refit's
    (`refit_epochs`: the epochs validation chose) trains that many epochs with nothing left to validate on."""
    if refit_epochs is not None:
        return (
            f"refit: {epochs_text(refit_epochs)} (the best on validation), each {steps_per_epoch:,} steps "
            f"({windows:,} windows of every interaction but each user's test target / batch {config.batch_size}); "
            "the model after the last one is kept"
        )
    epochs = config.epoch_limit
    stop = (
        f"at most {epochs} epochs, stopping after {config.patience} without a better valid {config.select_metric}"
        if config.epochs is None and config.patience is not None
        else f"{epochs} epochs"
    )
    capped = f", capped at {total_steps:,} steps" if total_steps < epochs * steps_per_epoch else ""
    return (
        f"plan: {stop}; each epoch {steps_per_epoch:,} steps ({windows:,} training windows / batch {config.batch_size})"
        f"{capped}, then validation"
        + ("; then a refit for as many epochs as validation chooses (--refit)" if config.refit else "")
        + "; the time left shows in the progress bar after the first steps"
    )


def epochs_text(epochs: int) -> str:
    """`1 epoch`, `24 epochs`."""
    return f"{epochs} epoch{'s' if epochs != 1 else ''}"


def run_clock(config: TrainConfig, steps_per_epoch: int, refit_epochs: int | None = None) -> tuple[int, RunClock]:
    """(the steps the learning-rate schedule spans, the clock of the steps this run trains). A refit
    (`refit_epochs`) trains that many epochs under the schedule of the run it repeats and validates nothing; a run
    that a refit follows counts the refit's steps, at most its own (its epochs are chosen later)."""
    schedule = config.epoch_limit * steps_per_epoch
    schedule = min(schedule, config.max_steps) if config.max_steps else schedule
    refitting = refit_epochs is not None
    total = min(schedule, refit_epochs * steps_per_epoch) if refitting else schedule
    may_stop_early = config.epochs is None and config.patience is not None and not refitting
    clock = RunClock(steps_per_epoch, total, may_stop_early, test=config.evaluate_test, validates=not refitting,
                     refit_steps=total if config.refit and not refitting else 0)  # fmt: skip
    return schedule, clock


# A CPU run expected to train longer than this gets `slow_text_hint`'s line.
SLOW_RUN_SECONDS = 3600.0
# What the hint tells a user to run instead: the CPU recipe (tower_defaults.CPU_RECIPE), which `--recipe auto` already
# chooses for a fine-tuning run on a CPU unless the options name trained text layers or the full recipe.
CPU_TEXT_FLAGS = "--recipe cpu"


def slow_text_hint(
    text_trainable_layers: int | None, device_type: str, training_seconds: float, from_table: bool = False
) -> str | None:
    """The line that tells a user of a long CPU run with trained text layers how to make it much shorter, or None.

    On 2 CPU cores the full recipe's text run trains for hours; the CPU recipe trains in 6-7 minutes (its refit
    included) on MovieLens-100K, at lower quality than the full recipe trained on a GPU (docs/training.md, "A text run
    on a CPU").
    A run gets here only with the full recipe (asked for, or pre-training) or trained text layers asked for: the
    user chooses.
    `from_table`: the run already trains its layers from the table.
    """
    if device_type != "cpu" or not text_trainable_layers or training_seconds < SLOW_RUN_SECONDS:
        return None
    even = ", even updated from a table" if from_table else ""
    return (
        f"hint: on this CPU most of the time goes to the {text_trainable_layers} trained text encoder layer(s){even}; "
        f"`{CPU_TEXT_FLAGS}` without --text-trainable-layers freezes the text backbone (its output is computed once "
        "per item) and trains word-piece "
        'embeddings in its place, in minutes, at lower quality (docs/training.md, "A text run on a CPU")'
    )


def duration(seconds: float) -> str:
    """45s, 14m, 1h05m."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass
class RunClock:
    """Measures a run's steps and validations and says how long it has left.

    steps_per_epoch, total_steps: the run's plan (total_steps at most epoch_limit x steps_per_epoch); may_stop_early:
    early stopping can end it before total_steps (the estimate is then an upper bound); test: a test evaluation
    follows the last epoch (about one validation's time); validates: a validation follows each epoch (not in a
    refit); refit_steps: the steps of a refit that follows this run (at most this many: an upper bound).
    """

    steps_per_epoch: int
    total_steps: int
    may_stop_early: bool
    test: bool
    validates: bool = True
    refit_steps: int = 0
    # Weight of the newest step in the step time's moving average: 0.03 (about the last 30 steps) predicted the time
    # left of the logged runs as well as 0.1 or better (docs/benchmarks.md, "How close the time left is").
    smoothing: float = 0.03
    step_seconds: float | None = None
    validation_seconds: float | None = None
    steps_seen: int = field(default=0, init=False)
    update_every: float = field(default=1.0, init=False)  # steps per update of stale text layers (1: none)
    update_seconds: float = field(default=0.0, init=False)  # one such update (`periodic`): the mean of those timed
    updates_measured: int = field(default=0, init=False)  # 0 while `update_seconds` is an estimate
    announced: bool = field(default=False, init=False)  # `announce_due` said so once

    def step(self, seconds: float) -> None:
        """Record one training step; the run's very first one (set-up, caches being filled) is not counted."""
        self.steps_seen += 1
        if self.steps_seen == 1:
            return
        previous = self.step_seconds
        self.step_seconds = seconds if previous is None else previous + self.smoothing * (seconds - previous)

    def validation(self, seconds: float) -> None:
        self.validation_seconds = seconds

    def periodic(self, every: float, seconds: float, *, measured: bool = False) -> None:
        """Record the time of an update run every `every` steps (stale text layers), spread over those steps;
        `measured`: timed, not estimated. The updates timed so far are averaged: one update's time varies with the
        items it runs (the last one alone missed the time left by about twice as much on most logged runs)."""
        self.update_every = every
        if not measured:
            if not self.updates_measured:
                self.update_seconds = seconds
            return
        self.updates_measured += 1
        if self.updates_measured == 1:
            self.update_seconds = seconds  # the estimate is not averaged in
        else:
            self.update_seconds += (seconds - self.update_seconds) / self.updates_measured

    def announce_due(self, after_steps: int) -> bool:
        """True once per run, when the run's time is worth printing: `after_steps` steps were measured and, with
        periodic updates, one was timed (the estimate before it, 3 table encodings, overstated a 9-minute run by
        about 30%)."""
        due = not self.announced and self.steps_seen >= after_steps
        due = due and (self.update_every <= 1 or self.updates_measured > 0)
        self.announced = self.announced or due
        return due

    def seconds_per_step(self) -> float | None:
        """A step's measured time, with its share of the periodic updates (None until a step was measured)."""
        if self.step_seconds is None:
            return None
        return self.step_seconds + (self.update_seconds / self.update_every if self.update_every > 1 else 0.0)

    def seconds_left(self, global_step: int) -> float | None:
        """The measured estimate of the time left after `global_step` steps (None until a step was measured);
        without a measured validation yet, validations are not counted."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        steps_left = max(0, self.total_steps - global_step) + self.refit_steps
        validations_left = math.ceil(self.total_steps / self.steps_per_epoch) - global_step // self.steps_per_epoch
        validations_left = (max(0, validations_left) if self.validates else 0) + (1 if self.test else 0)
        return steps_left * per_step + validations_left * (self.validation_seconds or 0.0)

    def describe(self, global_step: int) -> str | None:
        """`run ~14m left`, `run <=14m left` (early stopping may end it sooner), `+ validation` until one is measured."""
        left = self.seconds_left(global_step)
        if left is None:
            return None
        bound = "<=" if self.may_stop_early or self.refit_steps else "~"
        extra = " + validation" if self.validation_seconds is None and (self.validates or self.test) else ""
        return f"run {bound}{duration(left)}{extra} left"


def time_lines(clock: RunClock, global_step: int, text_trainable_layers: int | None, device_type: str) -> list[str]:
    """Printed once, after the first steps: how long the run's training will take, measured (and the CPU hint when
    trained text layers make it long)."""
    step = clock.seconds_per_step() or 0.0
    steps_left = clock.total_steps - global_step + clock.refit_steps
    training = step * steps_left
    refit = f" (a refit's {clock.refit_steps:,} at most among them)" if clock.refit_steps else ""
    lines = [
        f"time: {step:.2f} s per step measured; {steps_left:,} steps left{refit}, {duration(training)} of training; "
        f"{clock.describe(global_step)} (shown in the progress bar)"
    ]
    hint = slow_text_hint(text_trainable_layers, device_type, training, from_table=clock.update_every > 1)
    return lines + ([hint] if hint else [])


def epoch_line(
    config: TrainConfig, epoch: int, score: float, best: tuple[float, int], seconds: tuple[float, float], left: str | None
) -> str:
    """`epoch 3/30: valid ndcg@10 = 0.1210 (best); 35s of training + 2s of validation; run <=14m left`. `epoch`:
    1-based; `best`: the best score and its epoch (this one when it is the best); `seconds`: training, validation."""
    best_score, best_epoch = best
    training, validation = seconds
    return (
        f"epoch {epoch}/{config.epoch_limit}: valid {config.select_metric} = {score:.4f}"
        + (" (best)" if best_epoch == epoch else f" (best {best_score:.4f} at epoch {best_epoch})")
        + f"; {duration(training)} of training + {duration(validation)} of validation"
        + (f"; {left}" if left and epoch < config.epoch_limit else "")
    )
