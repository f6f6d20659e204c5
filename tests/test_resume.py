"""Interrupt a training run, resume it, and get exactly what an uninterrupted run with the same seed gives.

Both interrupted runs are real `pmmrec finetune` processes started by a small launcher that makes the interruption
land at a known point:

- SIGKILL after the first epoch: the launcher holds the process still right after it has written its first
  checkpoint (RUN/checkpoints/last); the test waits for that folder and sends SIGKILL, so nothing held in memory
  survives;
- SIGTERM in the middle of the second epoch: the launcher sends it to itself after step 6 of 12; the run writes a
  mid-epoch checkpoint and exits with status 130.

Each run is then continued with `--resume` and compared with the same command run without interruption: final
trainer weights (RUN/checkpoints/last), best model (RUN/model), every logged loss and metric.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_training import MAX_LENGTH, isolated_environment, run_cli, save_tiny_components, write_tiny_dataset

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4  # 15 users, batches of 4
EPOCHS = 3

# Runs `pmmrec ARGS...`, pausing for good right after the first checkpoint is complete on disk.
PAUSE_AFTER_FIRST_CHECKPOINT = textwrap.dedent(
    """
    import sys, time
    from pmmrec.training import run_dir as checkpoint

    write = checkpoint.save_checkpoint

    def save_then_wait(*args, **kwargs):
        write(*args, **kwargs)
        print("checkpoint written", flush=True)
        time.sleep(600)

    checkpoint.save_checkpoint = save_then_wait
    from pmmrec.cli import app

    app(sys.argv[1:], prog_name="pmmrec")
    """
)

# Runs `pmmrec ARGS...`, sending itself the signal $STOP_SIGNAL (default SIGTERM) after global step 6 (the middle
# of epoch 2).
SIGTERM_AFTER_STEP_6 = textwrap.dedent(
    """
    import os, signal, sys
    from pmmrec.training import trainer as loop

    step = loop.Trainer._step

    def step_then_terminate(self, batch, global_step):
        values = step(self, batch, global_step)
        if global_step + 1 == 6:
            os.kill(os.getpid(), int(os.environ.get("STOP_SIGNAL", signal.SIGTERM)))
        return values

    loop.Trainer._step = step_then_terminate
    from pmmrec.cli import app

    app(sys.argv[1:], prog_name="pmmrec")
    """
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The training command and its uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as monkeypatch, isolated_environment(root, monkeypatch):
        data = write_tiny_dataset(root / "data")
        parts = save_tiny_components(root / "components")
        args = [
            "finetune", "--data", str(data), "--text", str(parts["text"]), "--user", str(parts["user"]),
            "--max-length", str(MAX_LENGTH), "--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "0.003",
            "--seed", "7", "--nid-weight", "0.2", "--rcl-weight", "0.2", "--device", "cpu", "--quiet",
        ]  # fmt: skip
        run_cli(*args, "--out", root / "straight")
    return args, root / "straight"


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with isolated_environment(tmp_path, monkeypatch):  # also OMP_NUM_THREADS=1 for the interrupted process
        yield


def launch(launcher: str, args: list[str], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", launcher, *args, "--out", str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in {"seconds", "items_per_s", "data_wait_s", "step_s"}}


def log_records(run: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_same_run(straight: Path, resumed: Path) -> None:
    final_straight = load_file(straight / "checkpoints" / "last" / "training_module.safetensors")
    final_resumed = load_file(resumed / "checkpoints" / "last" / "training_module.safetensors")
    assert final_straight.keys() == final_resumed.keys()
    assert any(k.startswith("nid.") for k in final_straight)  # the objective heads are part of the state
    for key, tensor in final_straight.items():
        assert (final_resumed[key] - tensor).abs().max().item() <= 1e-6, key
    for slot in ("text", "fusion", "user"):
        best_straight = load_file(straight / "model" / slot / "model.safetensors")
        best_resumed = load_file(resumed / "model" / slot / "model.safetensors")
        assert best_straight.keys() == best_resumed.keys()
        for key, tensor in best_straight.items():
            assert (best_resumed[key] - tensor).abs().max().item() <= 1e-6, f"{slot}.{key}"
    straight_log, resumed_log = log_records(straight), log_records(resumed)
    total = EPOCHS * STEPS_PER_EPOCH
    assert [r["step"] for r in straight_log if r["event"] == "step"] == list(range(1, total + 1))
    assert [r["step"] for r in resumed_log if r["event"] == "step"] == list(range(1, total + 1))  # none lost or redone
    assert len(straight_log) == len(resumed_log)
    for a, b in zip(straight_log, resumed_log, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), (a, b)
    summary_straight = json.loads((straight / "summary.json").read_text())
    summary_resumed = json.loads((resumed / "summary.json").read_text())
    for key in ("best_epoch", "valid", "test", "steps"):
        assert summary_resumed[key] == pytest.approx(summary_straight[key], abs=1e-9), key
    assert len(summary_resumed["history"]) == EPOCHS


def test_sigkill_after_an_epoch_then_resume_matches_an_uninterrupted_run(
    straight: tuple[list[str], Path], tmp_path: Path
) -> None:
    args, straight_run = straight
    resumed = tmp_path / "resumed"
    process = launch(PAUSE_AFTER_FIRST_CHECKPOINT, args, resumed)
    progress = resumed / "checkpoints" / "last" / "progress.json"
    try:
        deadline = time.monotonic() + 120
        while not progress.is_file():
            assert process.poll() is None, f"the run ended before its first checkpoint:\n{process.communicate()[0]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.2)  # let the launcher reach its pause right after the write
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGKILL and "checkpoint written" in output
    assert json.loads(progress.read_text())["epoch"] == 1  # killed after exactly one epoch
    assert not (resumed / "model").exists() and not (resumed / "summary.json").exists()

    run_cli(*args, "--out", resumed, "--resume")
    assert_same_run(straight_run, resumed)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_mid_epoch_checkpoints_and_resume_matches_an_uninterrupted_run(
    straight: tuple[list[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    # SIGINT (Ctrl-C) is claimed in docs/training.md and docs/robustness.md like SIGTERM; both are checked.
    monkeypatch.setenv("STOP_SIGNAL", str(int(signum)))
    args, straight_run = straight
    resumed = tmp_path / "resumed"
    process = launch(SIGTERM_AFTER_STEP_6, args, resumed)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 130, output
    assert "interrupted: stopped by a signal at epoch 2, step 2" in output and "--resume" in output
    progress = json.loads((resumed / "checkpoints" / "last" / "progress.json").read_text())
    assert (progress["epoch"], progress["step_in_epoch"], progress["global_step"]) == (1, 2, 6)

    run_cli(*args, "--out", resumed, "--resume")
    assert_same_run(straight_run, resumed)
