"""How close the time left is: replays the step times of finished runs (RUN/log.jsonl) through `RunClock` and prints
how far its training time left was from the time the run then took.

At every step from the 10th on (while at least 10 s of training remained) the clock's `seconds_left` is compared with
the sum of the step times that followed; the figures are the median and 90th percentile of |predicted - actual| /
actual over those steps. Validations are left out on both sides. Two rules side by side, on the same steps:
`before` (the rule of main before this script: the newest step weighs 0.1, and a table update counts as the last one
timed) and `now` (the clock as it is: `RunClock()`'s own defaults).

A step record with `update_s` (written since this script) gives its table-update seconds; in older logs a step over 5x
the run's median step is taken to hold an update of (its time - the median).

    python benchmarks/eta_accuracy.py RUN/log.jsonl [RUN2/log.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pmmrec.training.progress import RunClock


class RuleBefore(RunClock):
    """The clock's rule before: a table update counts as the last one timed."""

    def periodic(self, every: float, seconds: float, *, measured: bool = False) -> None:
        self.update_every, self.update_seconds = every, seconds
        self.updates_measured += int(measured)


@dataclass(frozen=True)
class Step:
    seconds: float  # the whole step, update included
    update: float  # the table update's share of it (0.0: none)


def read_steps(log: Path) -> list[Step]:
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [record for record in records if record.get("event") == "step"]
    if any("update_s" in record for record in records):
        return [Step(record["step_s"], record.get("update_s", 0.0)) for record in records]
    median = statistics.median(record["step_s"] for record in records)
    return [Step(r["step_s"], r["step_s"] - median if r["step_s"] > 5 * median else 0.0) for r in records]


def errors(steps: Sequence[Step], clock: RunClock, *, skip: int = 10, min_left: float = 10.0) -> list[float]:
    """|predicted - actual| / actual of the training time left after each step (as the trainer feeds the clock)."""
    left = [0.0] * (len(steps) + 1)
    for index in range(len(steps) - 1, -1, -1):
        left[index] = left[index + 1] + steps[index].seconds
    updates = sum(1 for step in steps if step.update)
    every = len(steps) / max(updates, 1)  # the trainer's steps per update (an epoch's steps / its updates)
    out = []
    for index, step in enumerate(steps):
        clock.step(step.seconds - step.update)
        if step.update:
            clock.periodic(every, step.update, measured=True)
        predicted = clock.seconds_left(index + 1)
        actual = left[index + 1]
        if index + 1 >= skip and predicted is not None and actual >= min_left:
            out.append(abs(predicted - actual) / actual)
    return out


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.3f} / {ordered[int(0.9 * (len(ordered) - 1))]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="RUN/log.jsonl files of finished runs")
    args = parser.parse_args()
    print("| run (log) | steps | table updates | before: median / p90 error | now: median / p90 error |")
    print("|---|---|---|---|---|")
    for log in args.logs:
        steps = read_steps(log)
        rules = {}
        for name, kind in (("before", RuleBefore), ("now", RunClock)):
            smoothing = {"smoothing": 0.1} if kind is RuleBefore else {}  # "now": the clock's own default
            clock = kind(len(steps), len(steps), may_stop_early=False, test=False, **smoothing)
            rules[name] = summary(errors(steps, clock))
        updates = sum(1 for step in steps if step.update)
        print(f"| {log.parent.name} | {len(steps):,} | {updates} | {rules['before']} | {rules['now']} |")


if __name__ == "__main__":
    main()
