"""Users' sequences at scale: reading users.tsv, the leave-one-out split, popularity counts (a before/after).

`DATASET` mode reads a dataset folder's users.tsv with whatever pmmrec is importable (so an older commit can be
measured by putting its checkout first on PYTHONPATH) and splits it; each step's time and peak anonymous memory
(sampled) are printed. `--popularity U N` times the training-set item counts on U random users over N items two
ways, in this process: one `bincount(minlength=N + 1)` per user (the Trainer's loop before issue 16) and the
library's `item_counts` (one `bincount` over the flat array); both must give the same counts.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sequences.py /tmp/scalefull/u1000000-i10000
    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/wt-base .venv/bin/python benchmarks/sequences.py /tmp/scalefull/u1000000-i10000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sequences.py --popularity 100000 100000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _measure import PeakMemory

import pmmrec
from pmmrec.data import leave_one_out, read_items_tsv, read_users_tsv


def read_and_split(root: Path) -> None:
    item_ids, _ = read_items_tsv(root / "items.tsv")
    index = {item_id: position + 1 for position, item_id in enumerate(item_ids)}
    print(f"pmmrec from {Path(pmmrec.__file__).parent}; load average {os.getloadavg()[0]:.1f}")
    with PeakMemory() as memory:
        started = time.perf_counter()
        _users, sequences = read_users_tsv(root / "users.tsv", index)
        seconds = time.perf_counter() - started
    print(f"  read users.tsv ({len(sequences):,} users): {seconds:.2f} s, peak {memory.bytes / 2**20:.0f} MiB")
    with PeakMemory() as memory:
        started = time.perf_counter()
        split = leave_one_out(sequences)
        seconds = time.perf_counter() - started
    print(f"  leave-one-out split ({split.num_users:,} users): {seconds:.2f} s, peak {memory.bytes / 2**20:.0f} MiB")


def popularity(users: int, items: int) -> None:
    from pmmrec.data import RaggedArray, item_counts

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, users)
    offsets = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    sequences = RaggedArray.from_offsets(rng.integers(1, items + 1, int(offsets[-1])), offsets)
    started = time.perf_counter()
    counts = torch.zeros(items + 1)
    for sequence in sequences:
        counts += torch.bincount(torch.as_tensor(sequence), minlength=items + 1).float()
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    flat = item_counts(sequences, items + 1)
    flat_s = time.perf_counter() - started
    assert np.array_equal(counts.numpy(), flat), "the two counts differ"
    print(f"popularity counts, {users:,} users x {items:,} items (load average {os.getloadavg()[0]:.1f}): "
          f"per-user bincount {loop_s:.2f} s, item_counts {flat_s * 1000:.1f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?", help="a dataset folder (e.g. from benchmarks/scale.py)")
    parser.add_argument("--popularity", type=int, nargs=2, metavar=("USERS", "ITEMS"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data is not None:
        read_and_split(args.data)
    if args.popularity:
        popularity(*args.popularity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
