"""Full-ranking throughput of pmmrec's rank_targets against the reference's per-user loop and against matmul.

A synthetic catalogue (N items + the padding row, d-dimensional float32 embeddings), U users with a state each,
a history of H distinct items each (masked out of the ranking) and a target outside the history. Three
measurements in the same run, on the same tensors:

- pmmrec: `pmmrec.evaluation.rank_targets` (users in chunks, item columns in cache-sized blocks, history masked
  by index assignment, rank = 1 + number of strictly higher scores); and the same with whole rows per chunk
  (`block_columns = N + 1`: the way it ranked before issue 16), whose ranks must be identical;
- matmul: `torch.mm` of exactly the same shapes (every chunk of user states times the item table), no ranking;
  its FLOP/s is this machine's measured matmul throughput, and matmul_fraction = pmmrec's effective FLOP/s
  (2 * U * (N+1) * d / its time) / that throughput;
- reference: one user at a time, scores = table @ state, history set to -inf, argsort descending, position of
  the target. It runs on a subset of users and is extrapolated linearly to all U (its ranks are checked
  against pmmrec's on that subset).

Peak memory is measured in a fresh child process that creates the item table, the states and the histories and
runs rank_targets once: peak resident set size (VmHWM) minus the resident size right after importing torch.
It is compared with the item table plus one chunk of scores (chunk x (N+1) float32), the bound the issue sets.

On a GPU (`--device cuda`) every tensor lives on the device, timings synchronise it, and peak memory is
torch.cuda.max_memory_allocated of the ranking call in this process, against the same bound.

    python benchmarks/ranking.py [--quick] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _measure import write_figures

from pmmrec.evaluation import rank_targets

HISTORY = 20


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across fork + exec, so a child probe
    would report its parent's peak whenever the parent had been larger."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_inputs(items: int, users: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Item table [N+1, d] (row 0 = padding), user states [U, d], CSR histories, targets outside the history."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, dim, generator=generator)
    table[0] = 0.0
    states = torch.randn(users, dim, generator=generator)
    drawn = torch.randint(1, items + 1, (users, HISTORY + 1), generator=generator)
    history_rows = []
    targets = torch.empty(users, dtype=torch.long)
    for user in range(users):  # distinct history items; the target is a further distinct item
        row = torch.unique(drawn[user])
        pick = int(torch.randint(len(row), (1,), generator=generator))
        targets[user] = row[pick]
        history_rows.append(torch.cat([row[:pick], row[pick + 1 :]]))
    lengths = torch.tensor([len(row) for row in history_rows])
    indptr = torch.zeros(users + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(lengths, 0)
    return {
        "table": table,
        "states": states,
        "targets": targets,
        "indptr": indptr,
        "history": torch.cat(history_rows),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rank_targets(
    inputs: dict[str, torch.Tensor], chunk: int, block: int | None = None
) -> tuple[float, torch.Tensor]:
    """rank_targets with its default item blocks, or `block` columns at a time (N + 1: whole rows, as before)."""
    device = inputs["states"].device
    _sync(device)
    started = time.perf_counter()
    ranks = rank_targets(
        inputs["states"], inputs["table"], inputs["targets"], inputs["indptr"], inputs["history"], chunk, block
    )
    _sync(device)
    return time.perf_counter() - started, ranks


@torch.inference_mode()
def time_matmul(inputs: dict[str, torch.Tensor], chunk: int) -> float:
    """torch.mm of the same shapes as rank_targets' multiplies (every chunk of states x the whole table)."""
    states, table = inputs["states"], inputs["table"]
    out = torch.empty(min(chunk, states.shape[0]), table.shape[0], device=states.device)
    _sync(states.device)
    started = time.perf_counter()
    for start in range(0, states.shape[0], chunk):
        part = states[start : start + chunk]
        torch.mm(part, table.t(), out=out[: part.shape[0]])
    _sync(states.device)
    return time.perf_counter() - started


@torch.inference_mode()
def reference_loop(inputs: dict[str, torch.Tensor], users: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The reference's method: per user, score every item, mask the history, argsort, find the target.

    Returns (seconds, ranks, near_ties). Items whose score is within float32 rounding of the target's can
    compare either way: argsort orders exact ties arbitrarily, and a matrix-vector product rounds differently
    from the chunked matrix multiply. So the two ranks may differ by up to the number of such items (counted
    outside the timed loop).
    """
    table, states, targets = inputs["table"], inputs["states"], inputs["targets"]
    indptr, history = inputs["indptr"], inputs["history"]
    ranks = torch.empty(users, dtype=torch.long)
    _sync(table.device)
    started = time.perf_counter()
    for user in range(users):
        scores = table @ states[user]
        scores[0] = float("-inf")
        scores[history[indptr[user] : indptr[user + 1]]] = float("-inf")
        order = torch.argsort(scores, descending=True)
        ranks[user] = int((order == targets[user]).nonzero()[0, 0]) + 1
    _sync(table.device)
    seconds = time.perf_counter() - started
    ties = torch.empty(users, dtype=torch.long)
    for user in range(users):
        scores = table @ states[user]
        near = torch.isclose(scores, scores[targets[user]].expand_as(scores), rtol=1e-5, atol=1e-4)
        ties[user] = int(near.sum()) - 1
    return seconds, ranks, ties


def memory_probe(items: int, users: int, dim: int, chunk: int, seed: int) -> dict[str, int]:
    """Run in a fresh process: peak RSS of building the inputs and ranking once, above the post-import RSS."""
    baseline = _rss_bytes()
    inputs = make_inputs(items, users, dim, seed)
    after_inputs = _rss_bytes()
    time_rank_targets(inputs, chunk)
    return {"baseline_rss": baseline, "after_inputs_rss": after_inputs, "peak_rss": _peak_rss_bytes()}


def measure_gpu_memory(inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Peak GPU memory of one ranking call, inputs included, against the table + one chunk of scores."""
    device = inputs["states"].device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    time_rank_targets(inputs, args.chunk)
    peak = torch.cuda.max_memory_allocated(device)
    table_bytes = (args.items + 1) * args.dim * 4
    chunk_bytes = min(args.chunk, args.users) * (args.items + 1) * 4
    return {
        "memory_method": "torch.cuda.max_memory_allocated during one rank_targets call; the inputs (table, states, "
        "histories) are resident before it and counted",
        "peak_bytes": peak,
        "inputs_bytes": resident,
        "item_table_bytes": table_bytes,
        "chunk_scores_bytes": chunk_bytes,
        "memory_bound_bytes": table_bytes + chunk_bytes,
        "peak_over_bound": peak / (table_bytes + chunk_bytes),
    }


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-probe",
        "--items",
        str(args.items),
        "--users",
        str(args.users),
        "--dim",
        str(args.dim),
        "--chunk",
        str(args.chunk),
        "--seed",
        str(args.seed),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    probe = json.loads(output.strip().splitlines()[-1])
    table_bytes = (args.items + 1) * args.dim * 4
    chunk_bytes = min(args.chunk, args.users) * (args.items + 1) * 4
    peak = probe["peak_rss"] - probe["baseline_rss"]
    return {
        "memory_method": "fresh child process: VmHWM (peak RSS) minus RSS right after importing torch; "
        "includes building the inputs (table, states, histories) and one rank_targets call",
        "peak_bytes": peak,
        "inputs_bytes": probe["after_inputs_rss"] - probe["baseline_rss"],
        "item_table_bytes": table_bytes,
        "chunk_scores_bytes": chunk_bytes,
        "memory_bound_bytes": table_bytes + chunk_bytes,
        "peak_over_bound": peak / (table_bytes + chunk_bytes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 items x 2,000 users (under a minute)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--items", type=int, help="catalogue size N (default 100,000; quick 20,000)")
    parser.add_argument("--users", type=int, help="users U (default 10,000; quick 2,000)")
    parser.add_argument("--dim", type=int, default=768, help="embedding width d (default 768)")
    parser.add_argument("--chunk", type=int, default=1024, help="users per matrix multiply (rank_targets chunk_size)")
    parser.add_argument("--loop-users", type=int, help="users ranked by the per-user loop (default 200; quick 50)")
    parser.add_argument("--repeats", type=int, default=2, help="timings of pmmrec and matmul (best is kept)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.items = args.items or (20_000 if args.quick else 100_000)
    args.users = args.users or (2_000 if args.quick else 10_000)
    args.loop_users = min(args.loop_users or (50 if args.quick else 200), args.users)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.items, args.users, args.dim, args.chunk, args.seed)))
        return 0

    started = time.perf_counter()
    load_before = os.getloadavg()
    print(
        f"ranking on {args.device}: N = {args.items:,} items, U = {args.users:,} users, d = {args.dim}, chunk {args.chunk}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"load average {load_before[0]:.1f}"
    )
    device = torch.device(args.device)
    inputs = {name: tensor.to(device) for name, tensor in make_inputs(args.items, args.users, args.dim, args.seed).items()}
    flops = 2.0 * args.users * (args.items + 1) * args.dim
    time_matmul(inputs, args.chunk)  # warm-up (allocator, BLAS)
    rank_times, mm_times, row_times = [], [], []
    ranks = torch.empty(0)
    for repeat in range(args.repeats):  # interleaved, best of each kept
        mm_times.append(time_matmul(inputs, args.chunk))
        took, ranks = time_rank_targets(inputs, args.chunk)
        rank_times.append(took)
        took, row_ranks = time_rank_targets(inputs, args.chunk, args.items + 1)
        row_times.append(took)
        assert torch.equal(row_ranks, ranks), "whole-row and blocked ranking disagree"
        print(
            f"  repeat {repeat + 1}: matmul {mm_times[-1]:.2f} s, rank_targets {rank_times[-1]:.2f} s, "
            f"whole rows {row_times[-1]:.2f} s"
        )
    rank_s, mm_s, rows_s = min(rank_times), min(mm_times), min(row_times)
    loop_s, loop_ranks, ties = reference_loop(inputs, args.loop_users)
    ranks, loop_ranks, ties = ranks.cpu(), loop_ranks.cpu(), ties.cpu()
    excess = loop_ranks - ranks[: args.loop_users]
    agree = bool((excess.abs() <= ties).all())  # equal up to items tied with the target within rounding
    exact = int((excess == 0).sum())
    loop_all_s = loop_s / args.loop_users * args.users
    memory = measure_gpu_memory(inputs, args) if device.type == "cuda" else measure_memory(args)
    load_after = os.getloadavg()
    figures: dict[str, Any] = {
        "benchmark": "ranking",
        "quick": args.quick,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before[0],
        "load_average_after": load_after[0],
        "items": args.items,
        "users": args.users,
        "dim": args.dim,
        "chunk": args.chunk,
        "history_per_user": HISTORY,
        "rank_targets_s": rank_s,
        "rank_targets_users_per_s": args.users / rank_s,
        "rank_targets_gflops": flops / rank_s / 1e9,
        "matmul_s": mm_s,
        "matmul_gflops": flops / mm_s / 1e9,
        "matmul_fraction": mm_s / rank_s,
        "whole_rows_s": rows_s,
        "block_speedup": rows_s / rank_s,
        "loop_users_timed": args.loop_users,
        "loop_s_timed": loop_s,
        "loop_s_extrapolated": loop_all_s,
        "loop_users_per_s": args.loop_users / loop_s,
        "loop_speedup": loop_all_s / rank_s,
        "loop_ranks_agree": agree,
        "loop_ranks_exactly_equal": exact,
        **memory,
        "wall_s": time.perf_counter() - started,
    }
    mib = 1024**2
    print()
    print(f"{'method':<44}{'seconds (all users)':>20}{'users/s':>12}{'GFLOP/s':>10}")
    print("-" * 86)
    print(
        f"{'torch.mm, same shapes (no ranking)':<44}{mm_s:>20.2f}{args.users / mm_s:>12,.0f}{flops / mm_s / 1e9:>10.1f}"
    )
    print(f"{'pmmrec rank_targets':<44}{rank_s:>20.2f}{args.users / rank_s:>12,.0f}{flops / rank_s / 1e9:>10.1f}")
    row_label = "rank_targets, whole rows (before issue 16)"
    print(f"{row_label:<44}{rows_s:>20.2f}{args.users / rows_s:>12,.0f}{flops / rows_s / 1e9:>10.1f}")
    loop_label = f"per-user loop + argsort ({args.loop_users} users, extrap.)"
    print(f"{loop_label:<44}{loop_all_s:>20.2f}{args.loop_users / loop_s:>12,.1f}{flops / loop_all_s / 1e9:>10.1f}")
    print(
        f"\nmatmul_fraction = {figures['matmul_fraction']:.3f} (target >= 0.5); "
        f"loop_speedup = {figures['loop_speedup']:.1f}x; loop ranks agree on {args.loop_users} users: {agree} "
        f"({exact} identical, the rest only by items tied with the target within float32 rounding)"
    )
    print(
        f"peak memory {memory['peak_bytes'] / mib:,.0f} MiB vs item table {memory['item_table_bytes'] / mib:,.0f} MiB "
        f"+ one chunk of scores {memory['chunk_scores_bytes'] / mib:,.0f} MiB = {memory['memory_bound_bytes'] / mib:,.0f} "
        f"MiB: {memory['peak_over_bound']:.2f}x (target <= 2x); wall {figures['wall_s']:.0f} s; "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
