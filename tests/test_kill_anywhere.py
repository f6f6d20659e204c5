"""SIGKILL at any moment, during a step or in the middle of a checkpoint write: `--resume` still ends with
exactly what an uninterrupted run gives (the fixtures and comparison come from test_resume)."""

from __future__ import annotations

import random
import signal
import textwrap
import time
from pathlib import Path

import pytest
from test_resume import _environment, assert_same_run, launch, straight  # noqa: F401 (fixtures used by name)
from test_training import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.robustness]

# Pauses forever in the middle of the second checkpoint write: weights are in the staging folder, the rest is not.
PAUSE_INSIDE_SECOND_CHECKPOINT = textwrap.dedent(
    """
    import sys, time
    from pmmrec.training import run_dir as checkpoint

    write = checkpoint.save_file
    calls = []

    def write_then_wait(*args, **kwargs):
        write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            print("inside checkpoint write", flush=True)
            time.sleep(600)

    checkpoint.save_file = write_then_wait
    from pmmrec.cli import app

    app(sys.argv[1:], prog_name="pmmrec")
    """
)

PLAIN = "import sys\nfrom pmmrec.cli import app\napp(sys.argv[1:], prog_name='pmmrec')\n"


def _wait_for(process, text: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
        assert process.poll() is None, "the run ended before the expected moment"
    raise AssertionError(f"{text!r} did not appear within {timeout} s")


def test_sigkill_inside_a_checkpoint_write(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    args, straight_run = request.getfixturevalue("straight")
    resumed = tmp_path / "resumed"
    process = launch(PAUSE_INSIDE_SECOND_CHECKPOINT, args, resumed)
    try:
        _wait_for(process, "inside checkpoint write")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
    checkpoints = resumed / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.endswith(".tmp")]  # the half-written one is left ...
    assert (checkpoints / "last" / "progress.json").is_file()  # ... beside the last complete one
    run_cli(*args, "--out", resumed, "--resume")
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert_same_run(straight_run, resumed)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_moment(request: pytest.FixtureRequest, tmp_path: Path, seed: int) -> None:
    args, straight_run = request.getfixturevalue("straight")
    resumed = tmp_path / "resumed"
    process = launch(PLAIN, args, resumed)
    delay = random.Random(seed).uniform(1.0, 8.0)
    try:
        process.wait(timeout=delay)
    except Exception:
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
    run_cli(*args, "--out", resumed, "--resume")
    assert_same_run(straight_run, resumed)
