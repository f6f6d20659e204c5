"""Measurement helpers shared by the benchmark scripts: matmul throughput, operator profiles, peak memory."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

_PAGE = os.sysconf("SC_PAGE_SIZE")


def matmul_gflops(rows: int, inner: int, columns: int, repeats: int = 5) -> float:
    """Best torch.mm throughput (GFLOP/s) on [rows, inner] x [inner, columns], float32, current threads."""
    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    out = torch.empty(rows, columns)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2.0 * rows * inner * columns / best / 1e9


def write_figures(path: Path | None, figures: dict[str, Any]) -> None:
    """A benchmark's figures as indented JSON at `path` (its folder created); nothing when no path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def top_operators(run: Callable[[], object], limit: int = 12) -> list[dict[str, Any]]:
    """Where the time of `run()` goes: the top operators by self CPU time (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    return [
        {"op": event.key, "self_cpu_ms": event.self_cpu_time_total / 1000, "share": event.self_cpu_time_total / total}
        for event in events[:limit]
    ]


def current_rss() -> int:
    """Anonymous resident memory of this process in bytes (RssAnon: heap, tensors, arrays).

    File-backed pages (a memory-mapped LMDB or prefix file, shared libraries) are left out: the kernel can drop
    them at any time, so they say nothing about whether a cost's memory is bounded.
    """
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def proportional_set_size(pid: int) -> int:
    """Anonymous PSS of a process in bytes (pages shared with the parent after fork divided among their users),
    0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class PeakMemory:
    """Peak anonymous RSS above the starting one while the block runs, sampled every `interval` s by a thread.

    tracemalloc cannot see torch's or numpy's allocations, and ru_maxrss only ever grows, so one process measuring
    several stages samples its RSS instead (short spikes between samples can be missed). `children()` may name
    further processes (DataLoader workers): the peak of their summed PSS is kept in `children_peak`.
    """

    def __init__(self, interval: float = 0.005, children: Callable[[], list[int]] | None = None) -> None:
        self.interval = interval
        self.children = children
        self.start = self.peak = self.children_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            if self.children is not None:
                pids = self.children()
                self.children_peak = max(self.children_peak, sum(proportional_set_size(pid) for pid in pids))
            time.sleep(self.interval if self.children is None else max(self.interval, 0.05))

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def bytes(self) -> int:
        """Peak RSS above the RSS at the start of the block."""
        return max(self.peak - self.start, 0)


def growth_exponent(sizes: list[float], costs: list[float], floor: float = 0.0) -> float | None:
    """Least-squares slope of log(cost) over log(size): 1 = linear growth; None with fewer than two points.

    Costs below `floor` (the measurement's noise: a few milliseconds, a few MiB) count as `floor`, so a cost too
    small to measure fits as flat instead of as a wild slope between two noise values.
    """
    points = [
        (math.log(s), math.log(max(c, floor))) for s, c in zip(sizes, costs, strict=True) if s > 0 and max(c, floor) > 0
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else None


def machine() -> dict[str, Any]:
    """Load average, CPU count, torch version and threads: stated beside every figure."""
    return {
        "load_average": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
