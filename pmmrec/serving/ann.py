"""Optional approximate nearest-neighbour (maximum inner product) search over the catalogue, for very large ones.

Either one HNSW graph per catalogue from a well-kept library (`faiss-cpu` by default; `usearch` and `hnswlib` are
accepted too: docs/serving.md gives the measurements behind the choice), or (`ivf`) a quantised scan whose best
`rescore` candidates are re-scored exactly (`pmmrec.serving.ivf`: near-exact answers for users between regions of
the catalogue, where a graph walk misses). Keys are catalogue indices (1-based), so the padding row is never in
the index. History exclusion stays exact: `search` over-fetches by the number of excluded items, drops them, and
widens the search until k eligible items are found or the catalogue is exhausted. Returned scores are recomputed
exactly from the table, so they equal the exact path's scores for the same items.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmmrec.errors import ConfigError
from pmmrec.fileio import atomic_file, write_json
from pmmrec.ranking import NO_ITEM
from pmmrec.serving.ivf import ivf_search, probes, train_ivf
from pmmrec.serving.options import DESCRIPTIONS, AnnConfig, Backend

__all__ = ["AnnConfig", "AnnIndex", "Backend"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigError(f"--ann needs the {module} package ({exc}): pip install 'pmmrec[serve]'") from None


class AnnIndex:
    """An HNSW graph over catalogue rows 1..N of an item table (inner product), growable by `add`."""

    def __init__(self, config: AnnConfig, dim: int, index: Any = None, count: int = 0) -> None:
        self.config = config
        self.dim = dim
        self.count = count  # catalogue indices 1..count are in the graph
        self._index = index if index is not None else self._empty()

    def _empty(self) -> Any:
        c = self.config
        if c.backend == "ivf":
            raise ConfigError("an ivf index is trained on the catalogue: create it with AnnIndex.build")
        if c.backend == "faiss":
            faiss = _require("faiss")
            inner = faiss.IndexHNSWFlat(self.dim, c.connectivity, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = c.ef_construction
            inner.hnsw.efSearch = c.ef_search
            return faiss.IndexIDMap2(inner)
        if c.backend == "usearch":
            _require("usearch")
            from usearch.index import Index

            return Index(
                ndim=self.dim,
                metric="ip",
                dtype="f32",
                connectivity=c.connectivity,
                expansion_add=c.ef_construction,
                expansion_search=c.ef_search,
            )
        hnswlib = _require("hnswlib")
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=1024, ef_construction=c.ef_construction, M=c.connectivity)
        index.set_ef(c.ef_search)
        return index

    @classmethod
    def build(cls, config: AnnConfig, table: torch.Tensor) -> AnnIndex:
        """The graph over rows 1..N of `table` [N+1, d]."""
        rows = np.ascontiguousarray(np.asarray(table[1:], dtype=np.float32))
        trained = None
        if config.backend == "ivf":
            trained = train_ivf(_require("faiss"), rows, lists=config.ivf_lists, code_dims=config.ivf_code_dims)
        index = cls(config, table.shape[1], trained)
        index.add(np.arange(1, table.shape[0], dtype=np.int64), rows)
        return index

    @property
    def description(self) -> str:
        """What answers the queries, for /health: 'faiss HNSW', 'faiss IVF-PQ 4-bit scan, exact re-scoring', ..."""
        return DESCRIPTIONS[self.config.backend]

    def add(self, keys: np.ndarray, vectors: torch.Tensor | np.ndarray) -> None:
        """Insert items (catalogue indices `keys`, their rows `vectors` [n, d])."""
        if len(keys) == 0:
            return
        data = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(keys), self.dim))
        keys = np.asarray(keys, dtype=np.int64)
        backend = self.config.backend
        if backend in ("faiss", "ivf"):
            self._index.add_with_ids(data, keys)
        elif backend == "usearch":
            self._index.add(keys.astype(np.uint64), data, threads=os.cpu_count() or 1)
        else:
            needed = self._index.get_current_count() + len(keys)
            if needed > self._index.get_max_elements():
                self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
            self._index.add_items(data, keys)
        self.count = max(self.count, int(keys.max()))

    def _raw_search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Catalogue indices [B, k] (NO_ITEM where the graph returned fewer)."""
        backend = self.config.backend
        if backend == "ivf":
            faiss = _require("faiss")
            return ivf_search(faiss, self._index, queries, k, probes(self._index, self.config.ivf_probe_share))
        if backend == "faiss":
            _, keys = self._index.search(queries, k)
            return np.where(keys < 0, NO_ITEM, keys)
        if backend == "usearch":
            matches = self._index.search(queries, k, threads=1)
            if len(queries) == 1:  # a single query answers Matches (found keys only), a batch BatchMatches
                found = np.asarray(matches.keys, dtype=np.int64)
                keys = np.full((1, k), NO_ITEM, dtype=np.int64)
                keys[0, : len(found)] = found
                return keys
            keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
            filled = np.arange(keys.shape[1])[None, :] < np.asarray(matches.counts).reshape(-1, 1)
            return np.where(filled, keys, NO_ITEM)
        k = min(k, self._index.get_current_count())
        self._index.set_ef(max(self.config.ef_search, k))
        keys, _ = self._index.knn_query(queries, k=k)
        return keys.astype(np.int64)

    def search(
        self, states: torch.Tensor, table: torch.Tensor, k: int, exclude: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `pmmrec.ranking.top_k` (scores [B, k'], indices [B, k'], -inf / NO_ITEM padding), approximately.

        Items past `self.count` (in the table but not yet in the graph) are never returned.
        """
        queries = np.ascontiguousarray(states.detach().float().cpu().numpy())
        batch = len(queries)
        count = min(k, self.count)
        scores = torch.full((batch, max(count, 0)), float("-inf"))
        indices = torch.full((batch, max(count, 0)), NO_ITEM, dtype=torch.long)
        if count < 1:
            return scores, indices
        pool = max(count, self.config.rescore) if self.config.backend == "ivf" else count  # re-scored candidates
        pending = list(range(batch))
        fetch = {b: min(self.count, pool + len(exclude[b])) for b in pending}
        while pending:
            widest = max(fetch[b] for b in pending)
            keys = self._raw_search(queries[pending], widest)
            still = []
            for row, b in enumerate(pending):
                banned = set(exclude[b])
                chosen = [int(key) for key in keys[row, : fetch[b]] if key != NO_ITEM and int(key) not in banned]
                if len(chosen) < count and fetch[b] < self.count:
                    fetch[b] = min(self.count, 2 * fetch[b])  # not enough eligible neighbours: widen the search
                    still.append(b)
                    continue
                chosen = chosen[:pool]
                if chosen:
                    picked = torch.tensor(chosen, dtype=torch.long)
                    exact = table[picked].float() @ states[b].float()
                    order = torch.argsort(exact, descending=True, stable=True)[:count]
                    scores[b, : len(order)] = exact[order]
                    indices[b, : len(order)] = picked[order]
            pending = still
        return scores, indices

    # ---- persistence ---------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the graph atomically (the library's own file format), and what it holds beside it."""
        write_json(_sidecar(path), {"count": self.count, "backend": self.config.backend})
        backend = self.config.backend
        if backend in ("faiss", "ivf"):
            import faiss

            payload = faiss.serialize_index(self._index).tobytes()
        else:  # usearch and hnswlib write files of their own: write one beside, then publish its bytes atomically
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                tmp = Path(scratch) / "index"
                if backend == "usearch":
                    self._index.save(str(tmp))
                else:
                    self._index.save_index(str(tmp))
                payload = tmp.read_bytes()
        with atomic_file(path, mode="wb") as handle:
            handle.write(payload)

    @classmethod
    def load(cls, config: AnnConfig, dim: int, path: Path, count: int) -> AnnIndex:
        """Read a graph written by `save` that holds catalogue indices 1..count."""
        facts = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if facts.get("count") != count or facts.get("backend") != config.backend:
            raise ConfigError(f"{path}: holds {facts.get('count')} {facts.get('backend')} items, expected {count}")
        backend = config.backend
        if backend == "ivf":
            index = _require("faiss").deserialize_index(np.fromfile(path, dtype=np.uint8))
        elif backend == "faiss":
            faiss = _require("faiss")
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
            faiss.downcast_index(index.index).hnsw.efSearch = config.ef_search
        elif backend == "usearch":
            _require("usearch")
            from usearch.index import Index

            index = Index.restore(str(path))
            if index is None:
                raise ConfigError(f"{path}: not a usearch index")
            index.expansion_search = config.ef_search
        else:
            hnswlib = _require("hnswlib")
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(path), max_elements=count + 1024)
            index.set_ef(config.ef_search)
        return cls(config, dim, index=index, count=count)

    def __len__(self) -> int:
        backend = self.config.backend
        if backend in ("faiss", "ivf"):
            return int(self._index.ntotal)
        if backend == "usearch":
            return len(self._index)
        return int(self._index.get_current_count())
