"""Measurement helpers shared by the benchmark scripts: matmul throughput, operator profiles, peak memory."""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections.abc import Callable
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
    """Resident set size of this process in bytes (/proc/self/statm)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE


def children_peak_rss() -> int:
    """Peak RSS in bytes of the largest finished child process (DataLoader workers)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


class PeakMemory:
    """Peak RSS above the starting RSS while the block runs, sampled every `interval` seconds by a thread.

    tracemalloc cannot see torch's or numpy's allocations, and ru_maxrss only ever grows, so one process measuring
    several stages samples its RSS instead (short spikes between samples can be missed).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval)

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
