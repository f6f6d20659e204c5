"""serve_load.py's client side: keep-alive clients and an adder as threads of the benchmark, and what it reads of
the server's processes from /proc (CPU time, threads, how the connections split over them)."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


class Client(threading.Thread):
    """Sends POST /recommend back to back on one keep-alive connection; records latencies after `measure_from`."""

    def __init__(
        self, port: int, bodies: list[bytes], measure_from: float, stop_at: float, seed: int, path: str = "/recommend"
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
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
                connection.request("POST", self.path, body=body, headers=headers)
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


def process_tree(pid: int) -> list[int]:
    """`pid` and its child processes (the copies of --server-processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(child) for child in (children.read_text().split() if children.exists() else []))]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children, all their threads (Linux /proc)."""
    total = 0
    for member in process_tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def process_connections(pid: int) -> list[int]:
    """Established TCP connections held by each process of `pid`'s tree (how the kernel split the clients)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01":  # TCP_ESTABLISHED
                    established.add(fields[9])
    counts = []
    for member in process_tree(pid):
        inodes = set()
        for fd in Path(f"/proc/{member}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        counts.append(len(inodes & established))
    return counts


def process_threads(pid: int) -> int:
    """Threads of a process and its children."""
    count = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                count += int(line.split()[1])
    return count


def measure(
    port: int, bodies: list[bytes], concurrency: int, warmup: float, duration: float, adds: float, label: str,
    server_pid: int, path: str = "/recommend",
) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    clients = [Client(port, bodies, measure_from, stop_at, seed, path) for seed in range(concurrency)]
    adder = Adder(port, adds, stop_at, f"load-{label}-{concurrency}") if adds > 0 else None
    for thread in [*clients, *([adder] if adder else [])]:
        thread.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    server_cpu, client_cpu, measured_at = process_cpu_s(server_pid), time.process_time(), time.perf_counter()
    threads, connections = process_threads(server_pid), process_connections(server_pid)
    for thread in [*clients, *([adder] if adder else [])]:
        thread.join()
    elapsed = time.perf_counter() - measured_at
    server_cpu, client_cpu = process_cpu_s(server_pid) - server_cpu, time.process_time() - client_cpu
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
        "server_cpu_ms_per_request": round(server_cpu / max(1, len(latencies)) * 1000 * duration / elapsed, 3),
        "server_cpu_share": round(server_cpu / elapsed, 2),
        "client_cpu_share": round(client_cpu / elapsed, 2),
        "server_threads": threads,
        "connections_per_process": connections,
        "load_average_after": os.getloadavg(),
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
