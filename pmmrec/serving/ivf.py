"""A quantised scan for maximum inner product search, made to be re-scored exactly: faiss IVF with 4-bit PQ codes.

Why this shape (docs/benchmarks.md, *Exact-quality answers at a million items*): a user between regions of the
catalogue has a state close to no item, and its best items are spread over much of the catalogue, so a graph
walk misses them and an inverted file must scan a large share of it; what decides the cost is then the bytes and
the work per scanned item. Each item is stored as `dim / code_dims` 4-bit codes (96 bytes at d = 384, against
1,536 for float32), scored with faiss's fast-scan kernels (register look-up tables), and the best `rescore`
candidates are re-scored exactly from the float32 table by the caller, so the k returned are ranked, and scored,
exactly as exact search ranks and scores them; recall is lost only where a true top-k item is not among them.

The coarse lists come from spherical k-means over the item directions: items are clustered by direction, not by
norm, since with inner products a region's long and short vectors are best found together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pmmrec.errors import ConfigError
from pmmrec.ranking import NO_ITEM

CODE_CENTROIDS = 16  # a 4-bit code: each sub-quantizer has 16 centroids, trained on at least as many rows
TRAIN_POINTS_PER_LIST = 64  # k-means sample per list (faiss warns under 39)
CODE_TRAINING_ROWS = 20_000  # rows the 16-centroid sub-quantizers are trained on


def list_count(items: int) -> int:
    """The default number of inverted lists: the power of two nearest 2 * sqrt(items), between 16 and 65,536."""
    return int(min(65_536, max(16, 2 ** round(math.log2(max(2.0 * math.sqrt(max(items, 1)), 1.0))))))


def code_count(dim: int, code_dims: int) -> int:
    """Sub-quantizers (4-bit codes per item): dim / code_dims when that divides dim and is even, else the
    largest even divisor of dim below it (faiss's fast scan packs codes in pairs), else one per dimension."""
    for count in range(max(dim // code_dims, 1), 0, -1):
        if dim % count == 0 and count % 2 == 0:
            return count
    return dim


@contextmanager
def single_threaded(faiss: Any) -> Iterator[None]:
    """faiss on one OpenMP thread: training the sub-quantizers is thousands of tiny parallel regions, which on a
    busy machine wait for descheduled threads (measured: 14 s on one thread, 359 s on two, under load)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def train_ivf(faiss: Any, vectors: np.ndarray, *, lists: int | None, code_dims: int, seed: int = 0) -> Any:
    """An empty, trained `IndexIVFPQFastScan` (inner product) for rows like `vectors` [n, d] (float32)."""
    count, dim = vectors.shape
    if count < CODE_CENTROIDS:
        raise ConfigError(f"--ann ivf needs at least {CODE_CENTROIDS} items to train its codes, got {count}")
    lists = min(lists or list_count(count), max(count, 1))
    rng = np.random.default_rng(seed)
    sample = vectors[np.sort(rng.choice(count, min(count, lists * TRAIN_POINTS_PER_LIST), replace=False))]
    directions = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    kmeans = faiss.Kmeans(dim, lists, niter=10, seed=seed, spherical=True, max_points_per_centroid=TRAIN_POINTS_PER_LIST)
    kmeans.train(np.ascontiguousarray(directions, dtype=np.float32))
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    index = faiss.IndexIVFPQFastScan(quantizer, dim, lists, code_count(dim, code_dims), 4, faiss.METRIC_INNER_PRODUCT)
    with single_threaded(faiss):
        index.train(np.ascontiguousarray(sample[:CODE_TRAINING_ROWS], dtype=np.float32))
    return index


def probes(index: Any, share: float) -> int:
    """Lists scanned per query for a share of them."""
    return max(1, min(int(index.nlist), round(share * index.nlist)))


def ivf_search(faiss: Any, index: Any, queries: np.ndarray, n: int, nprobe: int) -> np.ndarray:
    """Catalogue indices [B, n] of the n best approximate scores (NO_ITEM past the items found).

    Rows that found fewer than n items in their `nprobe` lists (few or small lists, many exclusions) are searched
    again over twice as many lists, up to all of them. The probe count goes with each call, so concurrent
    searches never change each other's setting.
    """
    keys = _scan(faiss, index, queries, n, nprobe)
    short = np.flatnonzero((keys == NO_ITEM).any(axis=1))
    while len(short) and nprobe < index.nlist:
        nprobe = min(int(index.nlist), 2 * nprobe)
        keys[short] = _scan(faiss, index, queries[short], n, nprobe)
        short = short[(keys[short] == NO_ITEM).any(axis=1)]
    return keys


def _scan(faiss: Any, index: Any, queries: np.ndarray, n: int, nprobe: int) -> np.ndarray:
    _, keys = index.search(np.ascontiguousarray(queries), n, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return np.where(keys < 0, NO_ITEM, keys).astype(np.int64)
