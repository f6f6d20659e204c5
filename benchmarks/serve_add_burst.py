"""Reads while items are added in a burst: /recommend latency of one client, alone and while N clients add items
through POST /items at once, against a real `pmmrec serve` process (its item encoders loaded first).

    python benchmarks/serve_add_burst.py --model MODEL --data DATA [--adds 60] [--json PATH]

Prints the read latency alone (p50, p99, max over `--alone` requests), then during the burst (every read made while
the adds were in flight), the burst's duration and the answers' statuses. The adding clients run in another
process than the reading one, so the reader's timings do not include waiting for the adders' Python threads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load_clients import percentile
from _measure import write_figures
from serve_startup import server_health, stop_server


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


def add_burst(port: int, adds: int) -> list[int]:
    """`adds` threads each adding one item at once; their statuses."""
    statuses: list[int] = []

    def add(n: int) -> None:
        statuses.append(call(port, "POST", "/items", {"item_id": f"burst-{n}", "text": f"Burst item {n} about the sea"})[0])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(adds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--adds", type=int, default=60, help="Clients adding one item each, all at once.")
    parser.add_argument("--alone", type=int, default=100, help="Reads timed before the burst.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tempfile.mkdtemp(prefix="pmmrec-burst-")
    command = [str(Path(sys.executable).parent / "pmmrec"), "serve", "--model", args.model, "--data", args.data,
               "--state", state, "--port", str(port), "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    load_before = os.getloadavg()
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"pmmrec serve exited with status {process.returncode}")
            health = server_health(port)
            if health is not None and health["item_encoders"] == "ready":
                break
            time.sleep(0.1)
        user = call(port, "GET", "/users?limit=1")[1]["users"][0]
        query = {"user_id": user, "k": 10}

        def timed_read() -> float:
            started = time.perf_counter()
            call(port, "POST", "/recommend", query)
            return time.perf_counter() - started

        for _ in range(10):
            timed_read()
        alone = [timed_read() for _ in range(args.alone)]
        during: list[float] = []
        burst_over = threading.Event()

        def reader() -> None:
            while not burst_over.is_set():
                during.append(timed_read())

        with multiprocessing.get_context("spawn").Pool(1) as pool:  # the adders' threads apart from the reader's GIL
            pool.apply(add_burst, (port, 0))  # the pool's process started and its imports done before the clock
            reading = threading.Thread(target=reader)
            reading.start()
            started = time.perf_counter()
            statuses = pool.apply(add_burst, (port, args.adds))
            burst = time.perf_counter() - started
            burst_over.set()
            reading.join()
    finally:
        stop_server(process)
    load_after = os.getloadavg()
    figures = {"alone": percentiles(alone), "during_burst": percentiles(during), "adds": args.adds,
               "burst_s": round(burst, 2), "statuses": sorted(set(statuses)),
               "load_average_before": load_before, "load_average_after": load_after}  # fmt: skip
    print(f"reads alone:        {figures['alone']}")
    print(f"reads during burst: {figures['during_burst']}")
    print(f"{args.adds} adds at once: {burst:.2f} s, statuses {figures['statuses']}; load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
