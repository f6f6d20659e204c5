"""Where a /recommend ranking's CPU goes, per user state, for batches of B states: the user encoder (`forward`'s last
column, as before, against `final_states`) and the scoring of every item (the float32 product over the column-major
table, as before, against the int8 scan with float32 re-scoring), in this process, on --threads torch threads.

Also, first: this CPU's float32 matrix-product speed (a 1024^3 `a @ b`, GFLOP per CPU-second: the ceiling of the
encoder's speed), and the product of the table with B states in bfloat16 and float16 beside float32 (the
reduced-precision tables that were considered).

The table is the synthetic catalogue of serve_load.py (random unit directions times 10, 100,000 x d by default);
the user encoder is the given model's; histories are random, 1 to 50 items, exclude_seen, k = 10. Old and new are
timed alternately, --repeats times each, and the medians of CPU time (time.thread_time, this thread) and of wall
time are reported, so that the machine's load affects both alike.

    python benchmarks/serve_parts.py --model RUN/model [--items N] [--batch 1 --batch 8] [--repeats R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmmrec.model import PMMRec
from pmmrec.ranking import csr, left_pad, top_k
from pmmrec.serving.int8_scan import Int8Table

K = 10


def timed(run: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return time.thread_time() - cpu, time.perf_counter() - wall


@torch.inference_mode()
def measure_batch(
    user: Any, rows: torch.Tensor, column_table: torch.Tensor, int8: Int8Table, batch: int, rng: Any, repeats: int
) -> list[dict[str, Any]]:
    """Medians per state of the four parts for one batch of random histories, old and new alternating."""
    dim, length = rows.shape[1], user.max_length
    histories = [rng.integers(1, rows.shape[0], rng.integers(1, 51)).tolist() for _ in range(batch)]
    windows, mask = left_pad([history[-length:] for history in histories])
    exclude = [sorted(set(history)) for history in histories]
    embeddings = rows.index_select(0, windows.reshape(-1)).view(*windows.shape, dim) * mask[..., None]
    states = user.final_states(embeddings, mask)
    parts: dict[str, Callable[[], Any]] = {
        "encoder: forward (before)": lambda: user(embeddings, mask)[:, -1],
        "encoder: final_states": lambda: user.final_states(embeddings, mask),
        "scoring: float32 product (before)": lambda: top_k(states, column_table, K, *csr(exclude)),
        "scoring: int8 scan + re-scoring": lambda: int8.search(states, rows, K, exclude),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in parts}
    for run in parts.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in parts.items():
            samples[name].append(timed(run))
    results = []
    for name, values in samples.items():
        cpu = statistics.median(v[0] for v in values) * 1000 / batch
        wall = statistics.median(v[1] for v in values) * 1000 / batch
        results.append({"batch": batch, "part": name, "cpu_ms_per_state": round(cpu, 3), "wall_ms_per_state": round(wall, 3)})
        print(f"B={batch:<3} {name:<36} {cpu:8.3f} ms CPU / state  {wall:8.3f} ms wall / state", flush=True)
    return results


def cpu_speed(table: torch.Tensor, repeats: int) -> dict[str, float]:
    """GFLOP per CPU-second of a 1024^3 float32 product; ms of CPU per product of the table with B = 1 and 16 states
    in float32, bfloat16 and float16 (column-major [d, N], as the float32 server keeps it)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    cpu = statistics.median(timed(lambda: a @ b)[0] for _ in range(repeats))
    speeds = {"float32 1024^3 GFLOP per CPU-second": round(2 * 1024**3 / cpu / 1e9, 1)}
    columns = table.T.contiguous()
    for batch in (1, 16):
        states = torch.randn(batch, table.shape[1])
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            left, right = states.to(dtype), columns.to(dtype)
            left @ right
            cpu = statistics.median(timed(lambda left=left, right=right: left @ right)[0] for _ in range(max(3, repeats // 5)))
            speeds[f"B={batch} {str(dtype).removeprefix('torch.')} product ms"] = round(cpu * 1000, 2)
    for name, value in speeds.items():
        print(f"{name:<40} {value}", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Assembled model folder (its user encoder is used).")
    parser.add_argument("--items", type=int, default=100_000, help="Synthetic catalogue size.")
    parser.add_argument("--batch", type=int, action="append", help="States per batch (repeatable; default 1, 4, 8, 16).")
    parser.add_argument("--repeats", type=int, default=15, help="Timings per part and batch size.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pmmrec serve ranks on 1 per worker).")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    user = PMMRec.from_pretrained(args.model).user.eval()
    dim = user.config.dim
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(args.items + 1, dim, generator=generator)
    rows *= 10.0 / rows.norm(dim=1, keepdim=True)
    rows[0] = 0.0
    columns = torch.empty(dim, args.items + 1 + 1024)  # as the catalogue keeps it for --scan fp32
    columns[:, : args.items + 1] = rows.T
    column_table = columns[:, : args.items + 1].T
    started = time.perf_counter()
    int8 = Int8Table.build(rows)
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    speeds = cpu_speed(rows, args.repeats)
    results: list[dict[str, Any]] = []
    for batch in args.batch or [1, 4, 8, 16]:
        results += measure_batch(user, rows, column_table, int8, batch, rng, args.repeats)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "torch": torch.__version__, "threads": args.threads},
        "items": args.items, "dim": dim, "int8_build_s": round(build_s, 2), "cpu_speed": speeds, "rows": results,
    }  # fmt: skip
    print(f"int8 copy built in {build_s:.2f} s; load average before / after: {load_before} / {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
