"""Load test of `pmmrec serve`: requests/s and p50/p90/p99 latency of POST /recommend (k = 10) on loopback, with
concurrent requests ranked together (batched, `pmmrec serve`'s default) and one by one (unbatched,
`--no-batching`), in the same run; and, with --startup-runs, the time from starting `pmmrec serve` to its first
/health answer, cold (empty state folder: the catalogue is encoded) and warm (the table cache is read).

Two catalogues, each served by a separate server process per mode (uvicorn, one worker, as `pmmrec serve` runs it):

- movielens: the given model over the given dataset folder; the item table is encoded at start-up exactly as
  `pmmrec serve` does. Requests alternate between a random user id (their whole sequence, exclude_seen) and a
  random history of 1-50 catalogue items.
- synthetic: the same model's user encoder over a SYNTHETIC catalogue of --items items (default 100,000). The
  service is built directly with a random item table of shape (items + 1) x d instead of encoding 100,000 texts
  (the encoding cost is start-up only; the request cost, one user-encoder pass and one matrix-vector product,
  depends on the table's shape, not on its values). Rows are random unit directions times 10. Requests are random
  histories of 1-50 items with exclude_seen.

Clients are threads in this process, each with its own keep-alive HTTP/1.1 connection (http.client), sending
requests back to back for --duration seconds after a warm-up; each request is timed from send to the last byte of
the response. With --adds-per-second R, one more client adds R new items per second (POST /items, text encoded by
the model) during the measurement, to show that appends do not stall readers. Clients and server share this
machine's cores: the figures include the client's cost.

    python benchmarks/serve_load.py --model RUN/model --data DATA [--quick] [--json PATH]
        [--duration S] [--concurrency 1 --concurrency 4] [--items N] [--threads T] [--adds-per-second R]
        [--mode batched --mode unbatched] [--startup-runs N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_startup import startup_parts, startup_times, stop_server

K = 10
MAX_HISTORY = 50


# ---- server side (a child process) ----------------------------------------------------------------------


def build_service(
    scenario: str, model_ref: str, data_dir: str, items: int, seed: int, parallel: int, batching: bool, workers: int
) -> Any:
    import numpy as np
    import torch

    from pmmrec.model import PMMRec, read_manifest
    from pmmrec.serving import RecommenderService, ServeOptions, load_service

    options = ServeOptions(
        device="cpu", quiet=True, batching=batching, batch_workers=workers, max_parallel=parallel or None
    )
    if scenario == "movielens":
        return load_service(model_ref, data_dir, options)
    model = PMMRec.from_pretrained(model_ref)
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, model.dim, generator=generator)
    table *= 10.0 / table.norm(dim=1, keepdim=True)  # unit directions, a fixed norm: values do not change the cost
    table[0] = 0.0
    users = {f"s{u}": np.random.default_rng(u).integers(1, items + 1, 50) for u in range(100)}
    return RecommenderService(
        model,
        [f"syn-{i}" for i in range(1, items + 1)],
        [f"Synthetic item {i}" for i in range(1, items + 1)],
        table,
        users=users,
        dataset_name=f"synthetic-{items}",
        manifest=read_manifest(Path(model_ref)),
        reference=model_ref,
        options=options,
    )


def run_server(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from pmmrec.serving import create_app

    started = time.perf_counter()
    service = build_service(
        args.serve, args.model, args.data, args.items, args.seed, args.max_parallel, args.serve_mode == "batched",
        args.batch_workers,
    )  # fmt: skip
    startup = time.perf_counter() - started
    torch.set_num_threads(args.threads)  # as `pmmrec serve --threads` does after encoding the catalogue
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP; without it a
    # keep-alive response (headers and body written separately) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    info = {
        "port": sock.getsockname()[1],
        "items": service.num_items,
        "dim": service.model.dim,
        "max_length": service.model.max_length,
        "startup_s": round(startup, 2),
        "torch_threads": torch.get_num_threads(),
        "item_ids_sample": service.item_ids[:: max(1, service.num_items // 5000)],
        "user_ids_sample": list(service.view.users)[:2000],
    }
    sock.listen(128)  # connections queue until uvicorn accepts them
    print("READY " + json.dumps(info), flush=True)
    config = uvicorn.Config(create_app(service=service), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


# ---- client side ------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


class Client(threading.Thread):
    """Sends POST /recommend back to back on one keep-alive connection; records latencies after `measure_from`."""

    def __init__(self, port: int, bodies: list[bytes], measure_from: float, stop_at: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.bodies = bodies
        self.measure_from = measure_from
        self.stop_at = stop_at
        self.random = random.Random(seed)
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while True:
            now = time.perf_counter()
            if now >= self.stop_at:
                break
            body = self.random.choice(self.bodies)
            try:
                connection.request("POST", "/recommend", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            elapsed = time.perf_counter() - now
            if response.status != 200:
                self.errors.append(f"{response.status}: {payload[:200]!r}")
            elif now >= self.measure_from:
                self.latencies.append(elapsed)
        connection.close()


class Adder(threading.Thread):
    """Adds `rate` new items per second (POST /items) while the readers run; records each add's latency."""

    def __init__(self, port: int, rate: float, stop_at: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port, self.rate, self.stop_at, self.prefix = port, rate, stop_at, prefix
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        next_at = time.perf_counter()
        while next_at < self.stop_at:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            n += 1
            body = json.dumps(
                {"item_id": f"{self.prefix}-{n}", "text": f"A new film number {n} (2025). Genres: Drama."}
            )
            started = time.perf_counter()
            connection.request("POST", "/items", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 201:
                self.errors.append(f"{response.status}: {payload[:200]!r}")
            self.latencies.append(time.perf_counter() - started)
            next_at += 1.0 / self.rate
        connection.close()


def request_bodies(scenario: str, info: dict[str, Any], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    items = info["item_ids_sample"]
    bodies = []
    for n in range(count):
        if scenario == "movielens" and n % 2 == 0:
            body = {"user_id": rng.choice(info["user_ids_sample"]), "k": K, "exclude_seen": True}
        else:
            history = [rng.choice(items) for _ in range(rng.randint(1, MAX_HISTORY))]
            body = {"history": history, "k": K, "exclude_seen": True}
        bodies.append(json.dumps(body).encode("utf-8"))
    return bodies


def measure(
    port: int, bodies: list[bytes], concurrency: int, warmup: float, duration: float, adds: float, label: str
) -> dict[str, Any]:
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    clients = [Client(port, bodies, measure_from, stop_at, seed) for seed in range(concurrency)]
    adder = Adder(port, adds, stop_at, f"load-{label}-{concurrency}") if adds > 0 else None
    for thread in [*clients, *([adder] if adder else [])]:
        thread.start()
    for thread in [*clients, *([adder] if adder else [])]:
        thread.join()
    latencies = sorted(value for client in clients for value in client.latencies)
    errors = [error for client in clients for error in client.errors]
    result = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / duration, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "errors": len(errors),
        "error_sample": errors[:3],
    }
    if adder is not None:
        added = sorted(adder.latencies)
        result["adds"] = {
            "rate_per_s": adds,
            "count": len(added),
            "p50_ms": round(percentile(added, 50) * 1000, 2),
            "max_ms": round(added[-1] * 1000, 2) if added else None,
            "errors": len(adder.errors),
        }
    return result


def start_server(scenario: str, mode: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [
        sys.executable, __file__, "--serve", scenario, "--serve-mode", mode, "--model", args.model, "--data", args.data,
        "--items", str(args.items), "--seed", str(args.seed),
    ]  # fmt: skip
    command += ["--threads", str(args.threads), "--max-parallel", str(args.max_parallel)]
    command += ["--batch-workers", str(args.batch_workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY "):
            return process, json.loads(line[len("READY ") :])
    process.wait()
    raise SystemExit(f"the {scenario} server exited with status {process.returncode} before it was ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Assembled model folder (e.g. RUN/model of pmmrec finetune).")
    parser.add_argument("--data", required=True, help="The dataset folder it serves (MovieLens).")
    parser.add_argument("--quick", action="store_true", help="5 s per measurement, 1 s warm-up, concurrency 1 only.")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--duration", type=float, default=20.0, help="Measured seconds per row.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Unmeasured seconds before each row.")
    parser.add_argument("--concurrency", type=int, action="append", help="Client connections (repeatable).")
    parser.add_argument("--items", type=int, default=100_000, help="Size of the synthetic catalogue.")
    parser.add_argument("--scenario", action="append", choices=["movielens", "synthetic"], help="Default: both.")
    parser.add_argument("--adds-per-second", type=float, default=0.0, help="Also add items live at this rate.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per request (pmmrec serve's default).")
    parser.add_argument(
        "--max-parallel", type=int, default=0, help="Rankings computed at once in the server (default: CPU count)."
    )
    parser.add_argument("--mode", action="append", choices=["batched", "unbatched"], help="Default: both.")
    parser.add_argument("--batch-workers", type=int, default=2, help="Batched mode: ranking threads in the server.")
    parser.add_argument("--startup-runs", type=int, default=0, help="Also time start-up: 1 cold and N warm runs.")
    parser.add_argument("--startup-only", action="store_true", help="Only the start-up times (no load test).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", choices=["movielens", "synthetic"], help=argparse.SUPPRESS)
    parser.add_argument("--startup-parts", help=argparse.SUPPRESS)
    parser.add_argument("--serve-mode", choices=["batched", "unbatched"], default="batched", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args)
        return
    if args.startup_parts:
        startup_parts(args.model, args.data, args.startup_parts)
        return
    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
        args.concurrency = args.concurrency or [1]
    concurrencies = args.concurrency or [1, 4, 16]
    modes = args.mode or ["unbatched", "batched"]
    scenarios = args.scenario or ["movielens", "synthetic"]
    load_before = os.getloadavg()
    rows = []
    for scenario, mode in [] if args.startup_only else [(scenario, mode) for scenario in scenarios for mode in modes]:
        process, info = start_server(scenario, mode, args)
        try:
            bodies = request_bodies(scenario, info, 2000, args.seed)
            for concurrency in concurrencies:
                result = measure(
                    info["port"], bodies, concurrency, args.warmup, args.duration, args.adds_per_second, scenario
                )
                row = {
                    "scenario": scenario,
                    "mode": mode,
                    "items": info["items"],
                    "dim": info["dim"],
                    "startup_s": info["startup_s"],
                    "torch_threads": info["torch_threads"],
                    "k": K,
                    **result,
                }
                rows.append(row)
                adds = f"  adds: {row['adds']}" if "adds" in row else ""
                print(
                    f"{scenario:<10} {mode:<9} {row['items']:>8,} items  c={concurrency:<2} {row['requests_per_s']:>7.1f} req/s  "
                    f"p50 {row['p50_ms']:>6.2f} ms  p90 {row['p90_ms']:>6.2f} ms  p99 {row['p99_ms']:>6.2f} ms  "
                    f"max {row['max_ms']} ms  errors {row['errors']}{adds}",
                    flush=True,
                )
        finally:
            stop_server(process)
    startup = startup_times(args, args.startup_runs) if args.startup_runs > 0 else []
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "k": K,
            "adds_per_second": args.adds_per_second,
            "synthetic_items": args.items,
            "model": args.model,
            "data": args.data,
        },
        "rows": rows,
        "startup": startup,
    }
    print(
        f"load average (1, 5, 15 min) before / after the run: {load_before} / {report['machine']['load_average_after']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
