"""Measurement helpers shared by the benchmark scripts: matmul throughput, operator profiles, peak memory."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
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


def step_arguments(description: str, argv: list[str] | None, stepper: str) -> argparse.Namespace:
    """The options of a side-by-side training-step benchmark (`--data`, `--steps`, `--threads`, `--json`); sets
    torch's thread count. `stepper`: what steps once per batch (a variant, a path)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True, help="`pmmrec data movielens --domain all` output")
    parser.add_argument("--steps", type=int, default=40, help=f"batches (each {stepper} steps once per batch)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def step_rows(times: dict[str, list[float]], first_loss: dict[str, float], base: str, label: str) -> dict[str, Any]:
    """Median ms per step of each (its first step a warm-up), the ratio of `base`'s to it, and its first step's loss;
    printed as a table whose first column is headed `label`."""
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    width = max(len(label), *(len(name) for name in times))
    print(f"{label:<{width}} {'ms/step':>8} {'speed-up':>9} {'first loss':>11}")
    rows: dict[str, Any] = {}
    for name, median in medians.items():
        speedup = medians[base] / median
        rows[name] = {"ms_per_step": round(median * 1e3, 1), "speedup": round(speedup, 2),
                      "first_loss": round(first_loss[name], 5)}  # fmt: skip
        print(f"{name:<{width}} {median * 1e3:8.1f} {speedup:8.2f}x {first_loss[name]:11.5f}")
    return rows


def finish_step_benchmark(args: argparse.Namespace, load_before: tuple[float, float, float], figures: dict[str, Any]) -> None:
    """Print the thread count and load around a step benchmark; write its figures, with them, to `--json`."""
    load_after = os.getloadavg()
    print(f"threads {args.threads}, steps {args.steps}, load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    write_figures(args.json, {
        **figures, "threads": args.threads, "steps": args.steps, "load_before": load_before, "load_after": load_after,
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    })  # fmt: skip
