"""Approximate against exact search as the server runs them: recall@10, per-query p50/p99, build time, memory.

A SYNTHETIC catalogue of --items rows of width --dim with cluster structure (--clusters centres; each item is a
centre plus Gaussian noise, norms vary), as embedding tables of real catalogues have; random unit vectors would be
the worst case for any graph index and unlike a real table. Two kinds of query, each excluding a 5-item history
as `exclude_seen` does: `near` is one history item plus noise (a user whose taste is one region of the catalogue),
`mix` is the mean of the 5 history items (from 5 random clusters) plus noise, a state between regions, the hard
case for a graph index.

For each backend: build time (wall, --build-threads threads), the process's resident memory growth while
building and the size of the saved index (the graph and, for the HNSW backends, a copy of the vectors; for `ivf`
its 4-bit codes and lists), then --queries single queries one after another on one thread
through `AnnIndex.search` (exact exclusion and exact re-scoring included): p50/p99 latency and recall@10 against
`pmmrec.ranking.top_k` (exact) on the same queries, whose p50/p99 is reported too. Beside the wall-clock latency,
the CPU time of the querying thread (p50/p99): on a shared machine it stays close to what an idle core would take,
where the wall clock also counts the time the thread waited for a core. The float32 table itself (1,465 MiB at
10^6 x 384) is held by the server in every case and is not counted in an index's memory.

    python benchmarks/serve_ann.py --items 1000000 --backend faiss --backend usearch --json PATH
    python benchmarks/serve_ann.py --items 1000000 --backend ivf --backend faiss --probe-share 0.25 --probe-share 0.5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmmrec.ranking import csr, top_k
from pmmrec.serving.ann import AnnConfig, AnnIndex


def rss_mib() -> float:
    """Resident memory of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_table(items: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """[items + 1, dim] float32 (row 0 = padding): cluster centres plus noise, norms between 5 and 15."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    table = torch.empty(items + 1, dim)
    table[0] = 0.0
    chunk = 100_000
    for start in range(1, items + 1, chunk):
        stop = min(start + chunk, items + 1)
        assign = torch.randint(0, clusters, (stop - start,), generator=generator)
        rows = centres[assign] + 0.7 * torch.randn(stop - start, dim, generator=generator)
        norms = 5.0 + 10.0 * torch.rand(stop - start, 1, generator=generator)
        table[start:stop] = rows / rows.norm(dim=1, keepdim=True) * norms
    return table


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def exact_rows(
    states: dict[str, torch.Tensor], table: torch.Tensor, histories: list[list[int]], kinds: list[str], k: int
) -> tuple[dict[str, list[set[int]]], list[dict[str, Any]]]:
    """Exact search, one query at a time: each query's top-k ids, and a row of latencies per kind."""
    exact_ids: dict[str, list[set[int]]] = {}
    rows = []
    for kind in kinds:
        exact_ids[kind], exact_ms, cpu_ms = [], [], []
        for q, history in enumerate(histories):
            indptr, items = csr([history])
            begin, begin_cpu = time.perf_counter(), time.thread_time()
            _, indices = top_k(states[kind][q : q + 1], table, k, indptr, items)
            exact_ms.append((time.perf_counter() - begin) * 1000)
            cpu_ms.append((time.thread_time() - begin_cpu) * 1000)
            exact_ids[kind].append(set(indices[0].tolist()))
        rows.append({
            "method": "exact", "query": kind, "p50_ms": round(percentile(exact_ms, 50), 2), "p99_ms": round(percentile(exact_ms, 99), 2),
            "cpu_p50_ms": round(percentile(cpu_ms, 50), 2), "cpu_p99_ms": round(percentile(cpu_ms, 99), 2),
        })
        print(rows[-1], flush=True)
    return exact_ids, rows


def build_index(config: AnnConfig, table: torch.Tensor, threads: int) -> tuple[AnnIndex, dict[str, Any]]:
    """The index over the table, with its build time, resident-memory growth and saved size."""
    if config.backend in ("faiss", "ivf"):
        import faiss

        faiss.omp_set_num_threads(threads)
    if config.backend == "usearch":
        os.environ["OMP_NUM_THREADS"] = str(threads)
    before = rss_mib()
    begin = time.perf_counter()
    index = AnnIndex.build(config, table)
    build_s = time.perf_counter() - begin
    gc.collect()
    memory = rss_mib() - before
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder) / "index")
        file_mib = (Path(folder) / "index").stat().st_size / 2**20
    if config.backend in ("faiss", "ivf"):
        faiss.omp_set_num_threads(1)
    return index, {"build_s": round(build_s, 1), "rss_growth_mib": round(memory), "index_file_mib": round(file_mib)}


def variants(index: AnnIndex, args: argparse.Namespace) -> Iterator[tuple[dict[str, Any], AnnIndex]]:
    """The search settings to measure on one built index: efSearch values (HNSW) or probe shares (ivf).

    A generator: the graph libraries keep efSearch in the index itself, so each value is set just before its
    queries run (and stays set until the next one).
    """
    config = index.config
    if config.backend == "ivf":
        shares = args.probe_share or [config.ivf_probe_share]
        lists = int(index._index.nlist)
        for share in shares:
            searched = AnnIndex(config.model_copy(update={"ivf_probe_share": share}), index.dim, index._index, index.count)
            yield {"lists": lists, "probe_share": share, "rescore": config.rescore}, searched
        return
    for ef in args.ef_search or [config.ef_search]:
        searched = AnnIndex(config.model_copy(update={"ef_search": ef}), index.dim, index._index, index.count)
        if config.backend == "faiss":
            import faiss

            faiss.downcast_index(index._index.index).hnsw.efSearch = ef
        elif config.backend == "usearch":
            index._index.expansion_search = ef
        yield {"ef_search": ef, "connectivity": config.connectivity, "ef_construction": config.ef_construction}, searched


def measure(
    searched: AnnIndex, states: torch.Tensor, table: torch.Tensor, histories: list[list[int]], exact: list[set[int]], k: int
) -> tuple[list[float], list[float], int]:
    """Wall and thread-CPU milliseconds of each single query, and the hits against exact search."""
    latencies, cpu, hits = [], [], 0
    for q, history in enumerate(histories):
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        _, indices = searched.search(states[q : q + 1], table, k, [history])
        latencies.append((time.perf_counter() - begin) * 1000)
        cpu.append((time.thread_time() - begin_cpu) * 1000)
        found = set(indices[0].tolist())
        assert not found & set(history), "an excluded item was returned"
        hits += len(found & exact[q])
    return latencies, cpu, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384, help="Embedding width (384: the MiniLM text models).")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--query", action="append", choices=["near", "mix"], help="Kind of query (repeatable; default both).")
    parser.add_argument("--backend", action="append", choices=["faiss", "usearch", "hnswlib", "ivf"])
    parser.add_argument("--connectivity", type=int, default=AnnConfig().connectivity)
    parser.add_argument("--ef-construction", type=int, default=AnnConfig().ef_construction)
    parser.add_argument("--ef-search", type=int, action="append", help="Repeatable; default: the server's.")
    parser.add_argument("--probe-share", type=float, action="append", help="ivf: share of lists scanned (repeatable).")
    parser.add_argument("--rescore", type=int, default=AnnConfig().rescore, help="ivf: candidates re-scored exactly.")
    parser.add_argument("--ivf-lists", type=int, help="ivf: inverted lists (default: the library's).")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.perf_counter()
    table = synthetic_table(args.items, args.dim, args.clusters, args.seed)
    print(f"table {tuple(table.shape)} in {time.perf_counter() - started:.1f} s; rss {rss_mib():.0f} MiB", flush=True)
    rng = np.random.default_rng(args.seed + 1)
    histories = [rng.integers(1, args.items + 1, 5).tolist() for _ in range(args.queries)]
    noise = torch.from_numpy(rng.standard_normal((args.queries, args.dim)).astype(np.float32))
    kinds = args.query or ["near", "mix"]
    states = {
        "near": torch.stack([table[h[-1]] for h in histories]) + 0.3 * noise,
        "mix": torch.stack([table[h].mean(0) for h in histories]) + noise,
    }
    exact_ids, rows = exact_rows(states, table, histories, kinds, args.k)
    for backend in args.backend or ["faiss"]:
        config = AnnConfig(
            backend=backend, connectivity=args.connectivity, ef_construction=args.ef_construction, ivf_lists=args.ivf_lists, rescore=args.rescore
        )
        index, built = build_index(config, table, args.build_threads)
        for setting, searched in variants(index, args):  # each setting is applied as the generator reaches it
            for kind in kinds:
                latencies, cpu, hits = measure(searched, states[kind], table, histories, exact_ids[kind], args.k)
                row = {"method": backend, "query": kind, **setting, **built}
                row |= {
                    "recall_at_k": round(hits / (args.k * args.queries), 4),
                    "p50_ms": round(percentile(latencies, 50), 2),
                    "p99_ms": round(percentile(latencies, 99), 2),
                    "cpu_p50_ms": round(percentile(cpu, 50), 2),
                    "cpu_p99_ms": round(percentile(cpu, 99), 2),
                }
                rows.append(row)
                print(row, flush=True)
        del index
    report = {
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": 1},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    print(f"load average before / after: {load_before} / {report['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
