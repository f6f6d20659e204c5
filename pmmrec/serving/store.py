"""Durable live items: every item added with POST /items is committed to a store before the 201 is sent.

The default store is SQLite in the server's state folder (`--state DIR`, file `items.sqlite3`, WAL journal,
`synchronous=FULL`): one machine, any number of server processes. `--store postgresql://...` shares one
catalogue between replicas on several machines (`pmmrec.serving.store_postgres`). Rows are numbered in commit
order (`seq`), so a replica catches up by reading the rows past the last one it has seen.

A row holds the item's id, text, the uploaded image file (validated, at most `max_image_bytes`) and, per model
fingerprint, the embedding the writing server computed; a server of the same model reads it back bit for bit, and a
server of another model encodes the item itself.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pmmrec.errors import ConfigError, PmmrecError
from pmmrec.fileio import WriteError

ITEMS_DB = "items.sqlite3"


class DuplicateItem(PmmrecError):
    """The store already holds an item with this id (added here or by another replica)."""


@dataclass(frozen=True)
class LiveItem:
    """One stored live item; `embedding` is the vector stored for the reader's model, or None."""

    seq: int
    item_id: str
    text: str
    image: bytes | None
    embedding: np.ndarray | None


class ItemStore(ABC):
    """Where live items are kept; subclasses implement the four operations for one database."""

    location: str

    @abstractmethod
    def add(self, item_id: str, text: str, image: bytes | None, model_key: str, embedding: np.ndarray) -> int:
        """Commit a new item (durable when this returns) and answer its seq; DuplicateItem when the id exists."""

    @abstractmethod
    def items_after(self, seq: int, model_key: str) -> list[LiveItem]:
        """Every item with a seq past `seq`, in seq order, with the embedding stored for `model_key` if any."""

    @abstractmethod
    def put_embedding(self, item_id: str, model_key: str, embedding: np.ndarray) -> None:
        """Keep the embedding a server computed for an item (so the next start of this model reads it)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; committed items stay."""


def vector_bytes(embedding: np.ndarray) -> bytes:
    """Little-endian float32 bytes of a vector."""
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def vector_from(data: bytes | memoryview | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)


class SQLiteItemStore(ItemStore):
    """Live items in one SQLite file; safe for several processes on one machine (SQLite's own locking)."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL UNIQUE, "
        "text TEXT NOT NULL, image BLOB, created REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS embeddings (item_id TEXT NOT NULL, model_key TEXT NOT NULL, vector BLOB NOT NULL, "
        "PRIMARY KEY (item_id, model_key))",
    )

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed item survives a crash and a power cut
            self._db.execute("PRAGMA busy_timeout=30000")
            for statement in self.SCHEMA:
                self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--state: cannot open the item store {self.path} ({exc})") from None
        self._lock = threading.Lock()  # one statement at a time on this connection

    def add(self, item_id: str, text: str, image: bytes | None, model_key: str, embedding: np.ndarray) -> int:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    cursor = self._db.execute(
                        "INSERT INTO items (item_id, text, image, created) VALUES (?, ?, ?, ?)",
                        (item_id, text, image, time.time()),
                    )
                    self._db.execute(
                        "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", (item_id, model_key, vector_bytes(embedding))
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise DuplicateItem(f"item id {item_id!r} already exists") from None
            except sqlite3.Error as exc:
                raise WriteError(f"could not store item {item_id!r} in {self.path}: {exc}") from None
            return int(cursor.lastrowid or 0)

    def items_after(self, seq: int, model_key: str) -> list[LiveItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT i.seq, i.item_id, i.text, i.image, e.vector FROM items i LEFT JOIN embeddings e "
                "ON e.item_id = i.item_id AND e.model_key = ? WHERE i.seq > ? ORDER BY i.seq",
                (model_key, seq),
            ).fetchall()
        return [LiveItem(int(r[0]), r[1], r[2], r[3], vector_from(r[4])) for r in rows]

    def put_embedding(self, item_id: str, model_key: str, embedding: np.ndarray) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", (item_id, model_key, vector_bytes(embedding))
                )
            except sqlite3.Error as exc:
                raise WriteError(f"could not store the embedding of {item_id!r} in {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


