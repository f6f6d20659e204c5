"""Resumable full-catalogue evaluation: per-shard results written as they are computed, and read back.

A full ranking over hundreds of thousands of items can run for hours; a crash, a pre-emption or a collective
timeout must not throw the work away. An evaluation given a results folder writes, every `flush_seconds`, the
ranks of the users it has finished (`part-<first>-<last>.npz`: global user rows and their ranks, written
atomically), and the catalogue table once it is encoded. A later run with the same folder reads every part back
and ranks only the users still missing, on any number of processes.

The folder is bound to one evaluation by `manifest.json`: a digest of the model's weights, the catalogue inputs
and the split (histories, targets, which split). A folder of another evaluation is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pmmrec.data.ragged import RaggedArray
from pmmrec.errors import ConfigError
from pmmrec.fileio import atomic_file, write_json
from pmmrec.jsonfile import read_json_file

MANIFEST = "manifest.json"
TABLE_FILE = "item-table.npy"
STORE_VERSION = 1
_PART = re.compile(r"part-(\d+)-(\d+)\.npz")


def _update_array(digest: hashlib._Hash, array: np.ndarray | torch.Tensor) -> None:
    data = array.detach().cpu().contiguous() if isinstance(array, torch.Tensor) else np.ascontiguousarray(array)
    digest.update(f"{data.dtype}:{tuple(data.shape)}".encode())
    raw = (
        data.reshape(-1).view(torch.uint8).numpy()
        if isinstance(data, torch.Tensor)
        else data.reshape(-1).view(np.uint8)
    )
    digest.update(memoryview(raw))


def evaluation_key(
    model: torch.nn.Module,
    inputs: Sequence[np.ndarray | torch.Tensor | None],
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    which: str,
    max_length: int,
) -> str:
    """Digest of everything a rank depends on: weights, catalogue inputs, histories, targets, split, window."""
    digest = hashlib.sha256(f"pmmrec-eval-store-{STORE_VERSION}:{which}:{max_length}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if tensor.numel():
            _update_array(digest, tensor)
    for array in inputs:
        digest.update(b"-" if array is None else b"+")
        if array is not None:
            _update_array(digest, array)
    table = RaggedArray.from_rows(histories)
    for array in (table.lengths, table.flat(), np.asarray(targets, dtype=np.int64)):
        _update_array(digest, array)
    return digest.hexdigest()


class ResultStore:
    """The results folder of one evaluation: finished users' ranks and the catalogue table."""

    def __init__(self, folder: Path, key: str, num_users: int) -> None:
        self.folder = Path(folder)
        self.key = key
        self.num_users = num_users
        manifest = self.folder / MANIFEST
        if manifest.is_file():
            recorded = read_json_file(manifest, error=ConfigError, max_bytes=1 << 16, max_depth=4)
            if not isinstance(recorded, dict) or recorded.get("key") != key or recorded.get("users") != num_users:
                raise ConfigError(
                    f"{self.folder}: holds results of another evaluation (model, data or split differ); "
                    "use an empty --resume-dir"
                )
        else:
            write_json(
                manifest, {"format": "pmmrec-eval-results", "version": STORE_VERSION, "key": key, "users": num_users}
            )

    def finished(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, ranks) of every user some earlier run finished; unreadable parts are ignored (redone)."""
        users, ranks = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for path in sorted(self.folder.glob("part-*.npz")):
            if not _PART.fullmatch(path.name):
                continue
            try:
                with np.load(path) as part:
                    part_users, part_ranks = part["users"].astype(np.int64), part["ranks"].astype(np.int64)
            except (OSError, ValueError, KeyError):
                continue
            valid = part_users.shape == part_ranks.shape and bool(
                ((part_users >= 0) & (part_users < self.num_users)).all()
            )
            if valid:
                users.append(part_users)
                ranks.append(part_ranks)
        return np.concatenate(users), np.concatenate(ranks)

    def write_part(self, users: np.ndarray, ranks: np.ndarray) -> None:
        """Record finished users atomically (a part is complete or absent, never half written)."""
        if not len(users):
            return
        path = self.folder / f"part-{int(users[0]):010d}-{int(users[-1]):010d}.npz"
        with atomic_file(path, mode="wb", encoding=None) as handle:
            np.savez(handle, users=users.astype(np.int64), ranks=ranks.astype(np.int64))

    def load_table(self) -> torch.Tensor | None:
        """The catalogue table a previous run stored, or None."""
        path = self.folder / TABLE_FILE
        if not path.is_file():
            return None
        try:
            return torch.from_numpy(np.load(path))
        except (OSError, ValueError):
            return None

    def save_table(self, table: torch.Tensor) -> None:
        """Store the catalogue table (float32) so a resumed run does not encode the catalogue again."""
        with atomic_file(self.folder / TABLE_FILE, mode="wb", encoding=None) as handle:
            np.save(handle, table.detach().float().cpu().numpy())


class PartWriter:
    """Buffers (user, rank) pairs and writes them to the store every `flush_seconds` and at the end."""

    def __init__(self, store: ResultStore | None, flush_seconds: float = 30.0) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self._users: list[np.ndarray] = []
        self._ranks: list[np.ndarray] = []
        self._last = time.monotonic()

    def add(self, users: np.ndarray, ranks: np.ndarray) -> None:
        if self.store is None:
            return
        self._users.append(users)
        self._ranks.append(ranks)
        if time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.store is not None and self._users:
            self.store.write_part(np.concatenate(self._users), np.concatenate(self._ranks))
        self._users, self._ranks = [], []
        self._last = time.monotonic()
