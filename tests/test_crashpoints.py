"""Kill every writing command at each of its filesystem operations; the harness is tests/crashpoints.py.

Guards against (each failed on the code before this change):
- a kill between the two renames of a replacement leaving neither version under the name (`init --overwrite`,
  `assemble --overwrite`, `data movielens --overwrite`, best/, checkpoints/last: `--resume` then retrained from
  epoch 1 and deleted the complete staged checkpoint);
- `data build-lmdb` into a dataset writing images.lmdb and dataset.json in two steps (a kill between them left a
  dataset that no longer loads);
- leftovers of killed writes (staging folders, moved-aside versions, temporary files) never removed;
- outputs that differ between an uninterrupted run and a rerun after a kill (LMDB pages holding uninitialised
  memory; a used tokenizer saving its last truncation into tokenizer.json).

Runtime: the harness imports pmmrec once and forks for every run. Small commands are killed before every
operation that can change what a reader sees; long ones (assemble, training) before every operation on the
output's own name plus an even sample of the rest; see `choose_points`. About 35 s of CPU in all, run as two
processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.robustness, pytest.mark.slow]

HARNESS = Path(__file__).with_name("crashpoints.py")
SCENARIOS = [
    "init",
    "assemble",
    "data-movielens",
    "data-import-reference",
    "data-build-lmdb",
    "push-local-cache",
    "finetune",
]


def _scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RAM-backed folder where there is room (hundreds of runs write and delete small folders), else tmp."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 512 << 20:
        return Path(tempfile.mkdtemp(prefix="pmmrec-crash-", dir=shm))
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the harness as two processes (training alone vs the rest: about half the CPU time each)."""
    work = _scratch(tmp_path_factory)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PMMREC_CACHE": str(work / "pmmrec-cache")}
    first = ["finetune", "init", "push-local-cache"]
    halves = [first, [name for name in SCENARIOS if name not in first]]
    processes: list[subprocess.Popen[str]] = []
    try:
        processes += [
            subprocess.Popen(
                [sys.executable, str(HARNESS), str(work / f"report{n}.json"), str(work / f"runs{n}"), *names],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n, names in enumerate(halves)
        ]
        merged: dict[str, Any] = {}
        for n, process in enumerate(processes):
            output = process.communicate(timeout=1200)[0]
            assert process.returncode == 0, output[-3000:]
            merged |= json.loads((work / f"report{n}.json").read_text())
        yield merged
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_kill_at_any_operation_leaves_a_complete_version(report: dict[str, Any], scenario: str) -> None:
    result = report[scenario]
    assert not result["failures"], f"{len(result['failures'])} failures:\n" + "\n".join(result["failures"][:6])
    assert result["operations"] >= 10 and len(result["kill_points"]) >= 9, result
