"""serve_load.py's `command` scenario: the real `pmmrec serve` command over a synthetic catalogue.

The `synthetic` scenario builds its service inside the benchmark's own server process (and pre-forks copies itself
for --server-processes); this one runs `pmmrec serve` exactly as a user would, `--processes` included, so that what
the command adds (its access log, its copies started as fresh interpreters, the store poll) is in the figures.

An ID model can only serve the items of its own table, so the catalogue is written as files first: a dataset folder
of --items synthetic items (and 100 synthetic users), and a copy of the given ID model whose item table has one row
per synthetic item, the same rows as the synthetic scenario's table (random directions times 10, seeded), beside the
given model's trained user encoder. A content model (a text model, say) is copied as it is, and the same rows are
written as the catalogue table cache that `pmmrec serve` reads from its state folder (`pmmrec.serving.table_cache`,
under the key the server computes), so the server starts without encoding 100,000 texts and ranks the same table as
the synthetic scenario; `seed_state` puts that cache into each fresh state folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

USERS = 100
HISTORY = 50
SEED_STATE = "state-seed"  # under the catalogue folder: the table cache of a content model, copied into each state


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
    item_ids = [f"syn-{i}" for i in range(1, items + 1)]
    table = torch.randn(items + 1, model.dim, generator=torch.Generator().manual_seed(seed))
    table *= 10.0 / table.norm(dim=1, keepdim=True)
    table[0] = 0.0
    model_dir, data_dir = folder / "model", folder / "data"
    if model.item_tower is not None:
        tower = IdItemTower.create(CreateOptions(dim=model.dim, item_ids=item_ids))
        with torch.no_grad():
            tower.embeddings.weight.copy_(table)
        PMMRec(user=model.user, item_tower=tower).save_pretrained(model_dir)
    elif Path(model_ref).is_dir():
        shutil.copytree(model_ref, model_dir)
    else:
        raise SystemExit("--scenario command: give a content model as a local folder (its table cache is written)")
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
    if model.item_tower is None:
        _write_table_cache(model_dir, data_dir, folder / SEED_STATE, table)
    return model.dim


def _write_table_cache(model_dir: Path, data_dir: Path, state: Path, table: Any) -> None:
    """Write `table` as the catalogue table cache `pmmrec serve --state STATE` reads for this model and dataset."""
    import torch

    from pmmrec.data import load_dataset
    from pmmrec.model import read_manifest
    from pmmrec.serving.options import ServeOptions
    from pmmrec.serving.served_model import ServedModel
    from pmmrec.serving.table_cache import save_table, table_key, table_key_parts

    served = ServedModel.from_folder(model_dir, read_manifest(model_dir))
    parts = table_key_parts(served.key, load_dataset(data_dir), ServeOptions().encode_batch_size, torch.device("cpu"))
    save_table(state, table_key(parts), parts, table)


def seed_state(folder: Path, state: Path) -> None:
    """Copy the catalogue's table cache (written by `write_catalogue` for a content model) into a fresh state."""
    seeded = folder / SEED_STATE
    if seeded.is_dir():
        shutil.copytree(seeded, state, dirs_exist_ok=True)


def wait_until_idle(pid: int, share: float = 0.05, window_s: float = 0.5, limit_s: float = 60.0) -> float | None:
    """Seconds until `pid` and its children use under `share` of a core over `window_s`; None after `limit_s`."""
    from _load_clients import process_cpu_s

    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = process_cpu_s(pid)
        time.sleep(window_s)
        if process_cpu_s(pid) - before < share * window_s:
            return time.perf_counter() - started
    return None


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
    serving_s = time.perf_counter() - started
    settled = wait_until_idle(process.pid)
    info = {
        "port": port,
        "items": options["items"],
        "dim": options["dim"],
        "startup_s": round(serving_s, 2),
        # What each process still did in the background after it started serving (the int8 copy, a content
        # model's item encoders) ran before the measurement: seconds until the server was idle, or None (it never
        # was within the limit; measured as it ran).
        "settled_s": None if settled is None else round(settled, 2),
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
