"""Start-up of `pmmrec serve`, for `serve_load.py --startup-runs N`: seconds from the command to its first 200 on
/health and to its item encoders being loaded (what POST /items waits for), once cold (a fresh state folder: the
catalogue is encoded and cached) and N times warm (the table cache is read), then where a warm start's time goes,
timed in-process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def stop_server(process: subprocess.Popen[Any]) -> None:
    """Terminate a server process, killing it if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def startup_parts(model_ref: str, data_dir: str, state: str) -> None:
    """Where a warm start's time goes, in this process (JSON): imports, the user encoder and file checks, the
    dataset, the service over the cached table; then how long the item encoders take to load in the background."""
    marks = [time.perf_counter()]
    import torch  # noqa: F401

    marks.append(time.perf_counter())
    from pmmrec.data import load_dataset
    from pmmrec.model import read_manifest
    from pmmrec.serving import ServeOptions, build_service
    from pmmrec.serving.served_model import ServedModel

    marks.append(time.perf_counter())
    served = ServedModel.from_folder(Path(model_ref), read_manifest(Path(model_ref)))
    marks.append(time.perf_counter())
    dataset = load_dataset(data_dir)
    marks.append(time.perf_counter())
    service = build_service(served, dataset, options=ServeOptions(quiet=True, state_dir=Path(state), poll_interval=0))
    marks.append(time.perf_counter())
    service.model  # noqa: B018 (waits for the item encoders, loading since build_service returned)
    marks.append(time.perf_counter())
    service.close()
    names = ["import torch", "import pmmrec.serving", "user encoder + every file verified", "load_dataset",
             "build_service (model key, cached table, store)", "item encoders (background, after build_service)"]  # fmt: skip
    print(json.dumps({name: round(b - a, 2) for name, a, b in zip(names, marks[:-1], marks[1:], strict=True)}))


def server_health(port: int) -> dict[str, Any] | None:
    """The server's /health document, or None while it does not answer 200."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except OSError:
        return None


def startup_times(args: argparse.Namespace, runs: int) -> list[dict[str, Any]]:
    """Seconds from starting `pmmrec serve` to its first 200 on /health: once cold, then `runs` times warm."""
    state = Path(tempfile.mkdtemp(prefix="pmmrec-serve-state-"))
    rows = []
    try:
        for run in range(runs + 1):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            command = [str(Path(sys.executable).parent / "pmmrec"), "serve", "--model", args.model, "--data", args.data]
            command += ["--state", str(state), "--port", str(port), "--quiet"]
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"HF_HUB_OFFLINE": "1"})
            try:
                while True:
                    if process.poll() is not None:
                        raise SystemExit(f"pmmrec serve exited with status {process.returncode} before /health answered")
                    if (health := server_health(port)) is not None:
                        break
                    time.sleep(0.05)
                elapsed = time.perf_counter() - started
                while health.get("item_encoders") == "loading":  # POST /items waits until they are ready
                    time.sleep(0.05)
                    health = server_health(port) or health
                encoders = time.perf_counter() - started
            finally:
                stop_server(process)
            rows.append({"start": "cold" if run == 0 else "warm", "seconds_to_health": round(elapsed, 2),
                         "seconds_to_item_encoders": round(encoders, 2)})  # fmt: skip
            print(f"start-up {rows[-1]['start']}: {elapsed:.2f} s to /health, item encoders ready at {encoders:.2f} s", flush=True)
        parts = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("serve_load.py")), "--startup-parts", str(state), "--model", args.model, "--data", args.data],
            capture_output=True, text=True, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        rows.append({"start": "warm, in-process parts (s)", **json.loads(parts.stdout.strip().splitlines()[-1])})
        print(f"start-up parts: {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return rows
