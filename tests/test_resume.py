"""Stop a training run at a chosen moment, resume it, and get exactly what the uninterrupted run gives.

Each interrupted run is a real `pmmrec finetune` process started by a launcher that installs one hook. The hook
prints `HOOK <moment>` when the run reaches its moment and then holds the process there; the test waits for that
line on the process's output (never for a fixed time) and then sends the signal. So every test knows which case
it hit, asserts it from the run folder, continues the run with `--resume` and compares everything with the
session's uninterrupted run (conftest.py `straight_run`): final trainer weights, best model, every logged loss
and metric, the summary.

Moments: before the first checkpoint; mid-epoch, after the end-of-epoch checkpoint and with log lines written
past it; inside a checkpoint write; after the end. SIGKILL at each, and SIGTERM and SIGINT mid-epoch.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from tiny import StraightRun, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.robustness]

# Runs `pmmrec ARGS...` with the hook described by $PMMREC_TEST_HOOK (JSON: at, n, then).
LAUNCHER = textwrap.dedent(
    """
    import atexit, json, os, sys, threading
    hook = json.loads(os.environ["PMMREC_TEST_HOOK"])
    from pmmrec.training import trainer as loop

    handled = threading.Event()  # set once the trainer's own SIGTERM/SIGINT handler has run
    handle = loop.StopFlag._handle

    def handle_and_note(self, signum, frame):
        handle(self, signum, frame)
        handled.set()

    loop.StopFlag._handle = handle_and_note

    def reached(moment):
        print(f"HOOK {moment}", flush=True)
        if hook["then"] == "hold":
            threading.Event().wait()  # until the test's SIGKILL
        else:
            while not handled.wait(0.01):  # until the test's SIGTERM/SIGINT has been handled
                pass

    if hook["at"] == "step":  # once the n-th optimiser step is logged
        log = loop.RunFolder.log

        def log_then_hook(self, record):
            log(self, record)
            if record.get("event") == "step" and record.get("step") == hook["n"]:
                reached(f"after step {hook['n']}")

        loop.RunFolder.log = log_then_hook
    elif hook["at"] == "checkpoint":  # right after the n-th complete checkpoint
        save = loop.Trainer._save_last
        saved = []

        def save_then_hook(self, progress):
            save(self, progress)
            saved.append(1)
            if len(saved) == hook["n"]:
                reached(f"after checkpoint {hook['n']}")

        loop.Trainer._save_last = save_then_hook
    elif hook["at"] == "inside checkpoint":  # in the n-th checkpoint write, once the trainer state is staged
        import torch

        save = torch.save
        saved = []

        def save_then_hook(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            saved.append(1)
            if len(saved) == hook["n"]:
                reached(f"inside checkpoint {hook['n']}")

        torch.save = save_then_hook
    elif hook["at"] == "end":  # after the command has written everything, before the process exits
        atexit.register(reached, "after the end")
    from pmmrec.cli import app

    app(sys.argv[1:], prog_name="pmmrec")
    """
)
TIMEOUT_S = 300  # a deadline for a line that should come within seconds, generous for a loaded machine


class HookedRun:
    """A `pmmrec` process with one hook; its output is read line by line in a thread."""

    def __init__(self, args: list[str], out: Path, at: str, n: int = 0, then: str = "hold") -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PMMREC_TEST_HOOK": json.dumps({"at": at, "n": n, "then": then})}
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str) -> None:
        """Block until the process prints a line containing `text`; fail if it ends or the deadline passes first."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"{text!r} not printed within {TIMEOUT_S} s:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"the run ended before printing {text!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return

    def stop(self, sig: int) -> tuple[int, str]:
        """Send `sig`, wait for the process to end; returns (exit status, whole output)."""
        self.process.send_signal(sig)
        status = self.process.wait(timeout=TIMEOUT_S)
        self._reader.join(timeout=TIMEOUT_S)
        while (line := self._lines.get_nowait() if not self._lines.empty() else None) is not None:
            self.output.append(line)
        return status, "".join(self.output)


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """A private cache and OMP_NUM_THREADS=1 for the interrupted processes too."""


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in {"seconds", "eval_seconds", "items_per_s", "data_wait_s", "step_s"}}


def log_records(run: Path) -> list[dict[str, Any]]:
    return [without_timings(json.loads(line)) for line in (run / "log.jsonl").read_text().splitlines()]


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in log_records(run) if r["event"] == "step"]


def progress_of(run: Path) -> tuple[int, int, int]:
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    return progress["epoch"], progress["step_in_epoch"], progress["global_step"]


def assert_same_run(straight: StraightRun, resumed: Path) -> None:
    """Final trainer state, best model, every log record and the summary equal the uninterrupted run's."""
    final_straight = load_file(straight.run / "checkpoints" / "last" / "training_module.safetensors")
    final_resumed = load_file(resumed / "checkpoints" / "last" / "training_module.safetensors")
    assert final_straight.keys() == final_resumed.keys()
    assert any(k.startswith("nid.") for k in final_straight)  # the objective heads are part of the state
    for key, tensor in final_straight.items():
        assert (final_resumed[key] - tensor).abs().max().item() <= 1e-6, key
    for slot in ("text", "fusion", "user"):
        best_straight = load_file(straight.run / "model" / slot / "model.safetensors")
        best_resumed = load_file(resumed / "model" / slot / "model.safetensors")
        assert best_straight.keys() == best_resumed.keys()
        for key, tensor in best_straight.items():
            assert (best_resumed[key] - tensor).abs().max().item() <= 1e-6, f"{slot}.{key}"
    straight_log, resumed_log = log_records(straight.run), log_records(resumed)
    total = straight.epochs * straight.steps_per_epoch
    assert logged_steps(straight.run) == list(range(1, total + 1))
    assert logged_steps(resumed) == list(range(1, total + 1))  # none lost or repeated
    assert [r for r in resumed_log if r.get("split") == "test"] != [] and len(straight_log) == len(resumed_log)
    for a, b in zip(straight_log, resumed_log, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), (a, b)
    summary_straight = json.loads((straight.run / "summary.json").read_text())
    summary_resumed = json.loads((resumed / "summary.json").read_text())
    for key in ("best_epoch", "valid", "test", "steps"):
        assert summary_resumed[key] == pytest.approx(summary_straight[key], abs=1e-9), key
    assert len(summary_resumed["history"]) == straight.epochs


def resume(straight: StraightRun, out: Path) -> str:
    return run_cli(*straight.args, "--out", out, "--resume")


def test_sigkill_before_the_first_checkpoint_starts_over(straight_run: StraightRun, tmp_path: Path) -> None:
    """Guards against a resume that keeps the log lines of a run killed before anything was checkpointed."""
    out = tmp_path / "run"
    run = HookedRun(straight_run.args, out, at="step", n=2)
    run.wait_for("HOOK after step 2")
    status, _ = run.stop(signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not (out / "checkpoints" / "last").exists() and (out / "config.yaml").is_file()
    assert logged_steps(out) == [1, 2]  # the case: steps logged, nothing checkpointed
    output = resume(straight_run, out)
    assert "does not exist yet; starting the run from the beginning" in output
    assert_same_run(straight_run, out)


def test_sigkill_mid_epoch_drops_the_log_lines_past_the_checkpoint(straight_run: StraightRun, tmp_path: Path) -> None:
    """Guards against a resume that keeps log records written after the checkpoint (steps 5 and 6 twice), and a
    checkpoint that misses state (optimiser, scheduler, RNG, objective heads, history)."""
    out = tmp_path / "run"
    run = HookedRun(straight_run.args, out, at="step", n=6)
    run.wait_for("HOOK after step 6")
    status, _ = run.stop(signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert progress_of(out) == (1, 0, 4)  # the case: checkpoint at the end of epoch 1 ...
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]  # ... and two steps logged past it
    resume(straight_run, out)
    assert_same_run(straight_run, out)


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(
    straight_run: StraightRun, tmp_path: Path
) -> None:
    """Guards against a half-written checkpoint being read, or left behind, on resume."""
    out = tmp_path / "run"
    run = HookedRun(straight_run.args, out, at="inside checkpoint", n=2)
    run.wait_for("HOOK inside checkpoint 2")
    status, _ = run.stop(signal.SIGKILL)
    assert status == -signal.SIGKILL
    checkpoints = out / "checkpoints"
    staged = [p for p in checkpoints.iterdir() if p.name != "last"]
    assert staged, "the case: a second checkpoint half written beside the first"
    assert progress_of(out) == (1, 0, 4)  # the complete one is still epoch 1's
    resume(straight_run, out)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last"]  # the half-written one is gone
    assert_same_run(straight_run, out)


def test_sigkill_after_the_end_then_resume_changes_nothing(straight_run: StraightRun, tmp_path: Path) -> None:
    """Guards against resuming a finished run training again, or logging its test metrics twice."""
    out = tmp_path / "run"
    run = HookedRun(straight_run.args, out, at="end")
    run.wait_for("HOOK after the end")
    status, _ = run.stop(signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert progress_of(out) == (2, 0, 8) and (out / "summary.json").is_file()  # the case: the run had finished
    assert (out / "model" / "pmmrec.json").is_file()
    resume(straight_run, out)
    assert len([r for r in log_records(out) if r.get("split") == "test"]) == 1
    assert_same_run(straight_run, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_checkpoints_and_resume_matches(straight_run: StraightRun, tmp_path: Path, sig: int) -> None:
    """Guards against dying mid-step on SIGTERM/SIGINT, or checkpointing the wrong position in the epoch."""
    out = tmp_path / "run"
    run = HookedRun(straight_run.args, out, at="step", n=6, then="signal")
    run.wait_for("HOOK after step 6")
    status, output = run.stop(sig)
    assert status == 130, output
    assert "interrupted: stopped by a signal at epoch 2, step 2" in output and "--resume" in output
    assert progress_of(out) == (1, 2, 6)  # the case: a mid-epoch checkpoint after step 6
    resume(straight_run, out)
    assert_same_run(straight_run, out)
