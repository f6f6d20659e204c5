"""serve_load.py's `command` scenario: the real `pmmrec serve` command over a synthetic catalogue.

The `synthetic` scenario builds its service inside the benchmark's own server process (and pre-forks copies itself
for --server-processes); this one runs `pmmrec serve` exactly as a user would, `--processes` included, so that what
the command adds (its access log, its copies started as fresh interpreters, the store poll) is in the figures.

An ID model can only serve the items of its own table, so the catalogue is written as files first: a dataset folder
of --items synthetic items (and 100 synthetic users), and a copy of the given ID model whose item table has one row
per synthetic item, the same rows as the synthetic scenario's table (random directions times 10, seeded), beside the
given model's trained user encoder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

USERS = 100
HISTORY = 50


def write_catalogue(model_ref: str, items: int, seed: int, folder: Path) -> int:
    """Write folder/model and folder/data: a synthetic catalogue of `items` items for `model_ref`'s user encoder;
    returns the model's width d."""
    import numpy as np
    import torch

    from pmmrec.components import CreateOptions
    from pmmrec.components.item_tower_id import IdItemTower
    from pmmrec.data.builders import write_dataset
    from pmmrec.model import PMMRec

    model = PMMRec.from_pretrained(model_ref)
    if model.item_tower is None:
        raise SystemExit("--scenario command needs an ID model (its item table is replaced by the synthetic one)")
    item_ids = [f"syn-{i}" for i in range(1, items + 1)]
    tower = IdItemTower.create(CreateOptions(dim=model.dim, item_ids=item_ids))
    table = torch.randn(items + 1, model.dim, generator=torch.Generator().manual_seed(seed))
    table *= 10.0 / table.norm(dim=1, keepdim=True)
    table[0] = 0.0
    with torch.no_grad():
        tower.embeddings.weight.copy_(table)
    model_dir, data_dir = folder / "model", folder / "data"
    PMMRec(user=model.user, item_tower=tower).save_pretrained(model_dir)
    histories = [[item_ids[i - 1] for i in np.random.default_rng(u).integers(1, items + 1, HISTORY)] for u in range(USERS)]
    write_dataset(
        data_dir,
        name=f"synthetic-{items}",
        item_ids=item_ids,
        item_texts=[f"Synthetic item {i}" for i in range(1, items + 1)],
        user_ids=[f"s{u}" for u in range(USERS)],
        user_items=histories,
        provenance={"source": "benchmarks/serve_load.py --scenario command (random)"},
        preprocessing={},
    )
    return model.dim


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_command(
    model_dir: Path, data_dir: Path, state: Path, mode: str, options: dict[str, Any]
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start `pmmrec serve` and return once every one of its processes has started serving.

    `options`: processes, threads, batch_workers (as serve_load's flags), items and dim (of write_catalogue's model),
    extra (more arguments of `pmmrec serve`).
    """
    port = free_port()
    processes = int(options["processes"])
    command = [str(Path(sys.executable).parent / "pmmrec"), "serve", "--model", str(model_dir), "--data", str(data_dir),
               "--state", str(state), "--port", str(port), "--quiet", "--processes", str(processes),
               "--threads", str(options["threads"])]  # fmt: skip
    if options["batch_workers"] is not None:
        command += ["--batch-workers", str(options["batch_workers"])]
    command += options.get("extra", [])
    if mode == "unbatched":
        command.append("--no-batching")
    elif mode == "fp32":
        command += ["--scan", "fp32"]
    started = time.perf_counter()
    # The access log (stdout) goes nowhere but is still written, as a user's server writes it; uvicorn's own lines
    # (stderr) say when each process has started serving.
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    assert process.stderr is not None
    serving, lines = 0, []
    for line in process.stderr:
        lines.append(line)
        serving += "Application startup complete" in line
        if serving == processes:
            break
    else:
        process.wait()
        raise SystemExit(f"pmmrec serve exited with status {process.returncode}: {''.join(lines[-5:])}")
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # keep the pipe drained
    info = {
        "port": port,
        "items": options["items"],
        "dim": options["dim"],
        "startup_s": round(time.perf_counter() - started, 2),
        "torch_threads": options["threads"],
        "scan": "fp32" if mode == "fp32" else "int8",
        "pmmrec": str(Path(sys.modules["pmmrec"].__file__ or "").parent),
        "http": "auto",
        "server_processes": processes,
        "command": " ".join(command),
        "item_ids_sample": [f"syn-{i}" for i in range(1, options["items"] + 1, max(1, options["items"] // 5000))],
        "user_ids_sample": [f"s{u}" for u in range(USERS)],
    }
    return process, info
