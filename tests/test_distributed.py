"""Two processes with torchrun on CPU (gloo): evaluation equals one process; a DDP fine-tuning run completes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tiny import MAX_LENGTH, NUM_USERS, save_tiny_components, torchrun, write_tiny_dataset

from pmmrec import api
from pmmrec.data import load_dataset
from pmmrec.model import PMMRec
from pmmrec.training.config import ModelConfig
from pmmrec.training.jobs import build_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]
@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """A private cache (the torchrun processes inherit it), offline, one thread."""


def test_two_process_evaluation_equals_one_process(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    # An ID model keeps the two processes light (no text backbone to import); the evaluation path is the same,
    # and the DDP test below compares the two-process evaluation of a text model too.
    model = build_model(ModelConfig(item_tower="id", dim=16), load_dataset(data), MAX_LENGTH, seed=0)
    model_dir = model.save_pretrained(tmp_path / "model")
    one = api.evaluate(model_dir, data, ks=(1, 3, 5, 10), device="cpu", progress=False)
    out = tmp_path / "two.json"
    torchrun("evaluate", "--model", model_dir, "--data", data, "--k", 1, "--k", 3, "--k", 5, "--k", 10,
             "--device", "cpu", "--output", out, "--quiet")  # fmt: skip
    two = json.loads(out.read_text())
    assert two["split"] == "test" and two["num_users"] == one["num_users"] == NUM_USERS  # every user, once
    assert len([k for k in one if "@" in k]) == 12
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < one["hr@10"] < 1  # a non-trivial ranking (15 users over 30 items)


def test_ddp_finetune_with_two_processes_completes(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    parts = save_tiny_components(tmp_path / "components")
    run = tmp_path / "run"
    torchrun(
        "finetune", "--data", data, "--out", run, "--text", parts["text"], "--user", parts["user"],
        "--max-length", MAX_LENGTH, "--epochs", 2, "--batch-size", 4, "--gather-negatives", "--device", "cpu", "--quiet",
    )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["gather_negatives"] is True
    assert summary["users"] == NUM_USERS and len(summary["history"]) == 2
    # A text run on a CPU takes the CPU recipe, whose refit trains in the same process group (RUN/model is its own).
    assert summary["refit"]["epochs"] == summary["best_epoch"], summary.keys()
    # 15 users padded to 16 and split over 2 processes: 8 each, 2 batches of 4 per epoch.
    assert summary["steps"] == 2 * 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3, 4]  # logged once, by rank 0
    model = PMMRec.from_pretrained(run / "model")
    assert model.modalities == {"text"}
    # The test metrics the two processes computed at the best epoch are those of the saved model in one process.
    single = api.evaluate(run / "model", data, ks=(10, 20, 50), device="cpu", progress=False)
    for key, value in summary["test"].items():
        assert single[key] == pytest.approx(value, abs=1e-12), key



_WORKER = """
import atexit, logging, logging.handlers, sys
import torch.distributed as dist
from pmmrec.__main__ import run
from pmmrec.distributed import exit_worker

atexit.register(lambda: print("teardown ran"))  # os._exit skips it: no destructor, no atexit handler runs
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
buffered = logging.handlers.MemoryHandler(100, target=logging.FileHandler(sys.argv[1]))  # written when closed
logging.basicConfig(handlers=[buffered], level=logging.INFO)
logging.getLogger("worker").info("logged before the exit")
sys.stdout.write("written, not flushed;")
if sys.argv[2] == "exit_worker":
    exit_worker(3)
sys.argv = ["pmmrec", *sys.argv[2:]]
run()
"""


@pytest.mark.parametrize(
    ("arguments", "status"), [(["exit_worker"], 3), (["--version"], 0), (["no-such-command"], 2)]
)
def test_a_worker_in_a_process_group_exits_with_its_status_and_keeps_its_output(
    tmp_path: Path, arguments: list[str], status: int
) -> None:
    """Guards against a finished torchrun worker aborting in the process group's teardown (SIGABRT after its work,
    which fails the run) and against the way round it losing unflushed output, logs or the exit status."""
    import subprocess
    import sys

    log = tmp_path / "worker.log"
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(log), *arguments], capture_output=True, text=True, timeout=120,
        env=environment,
    )  # fmt: skip
    assert done.returncode == status, done.stderr
    assert done.stdout.startswith("written, not flushed;") and "teardown ran" not in done.stdout
    assert "logged before the exit" in log.read_text()
