"""Live items in PostgreSQL (psycopg 3), shared by server replicas on several machines.

A connection the server closed or the network broke is opened again at the next operation (that operation
fails when the database is still unreachable; a replica's poller tries again at its next tick). Inserts take a
transaction-scoped advisory lock before drawing their `seq`, so rows become visible in seq order:
a replica that has read every row up to seq s never later finds a committed row below s, and catching up is one
`WHERE seq > s` query.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from pmmrec.errors import ConfigError
from pmmrec.fileio import WriteError
from pmmrec.serving.store import DuplicateItem, ItemStore, LiveItem, vector_bytes, vector_from

log = logging.getLogger("pmmrec.serving")

_INSERT_LOCK = 0x706D6D72  # advisory lock key ("pmmr") serialising inserts across replicas

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pmmrec_items (seq BIGSERIAL PRIMARY KEY, item_id TEXT NOT NULL UNIQUE, "
    "text TEXT NOT NULL, image BYTEA, created TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS pmmrec_embeddings (item_id TEXT NOT NULL, model_key TEXT NOT NULL, "
    "vector BYTEA NOT NULL, PRIMARY KEY (item_id, model_key))",
)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"


class PostgresItemStore(ItemStore):
    """Live items in two tables (`pmmrec_items`, `pmmrec_embeddings`) of a PostgreSQL database."""

    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(f"--store postgresql://... needs psycopg ({exc}): pip install 'pmmrec[serve]'") from None
        self._psycopg = psycopg
        self.location = _redacted(url)
        self._url, self._timeout = url, connect_timeout
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))  # one replica creates tables
                for statement in SCHEMA:
                    self._db.execute(statement)
        except psycopg.Error as exc:
            raise ConfigError(f"--store {self.location}: cannot use the database ({str(exc).strip()})") from None
        self._lock = threading.Lock()

    def _connection(self) -> object:
        """The connection, checked with a round trip and opened again when the server or the network dropped it."""
        if not (self._db.closed or self._db.broken):
            try:
                self._db.execute("SELECT 1")
                return self._db
            except self._psycopg.OperationalError:
                log.warning("the connection to %s was lost; connecting again", self.location)
        self._db = self._psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout)
        return self._db

    def add(self, item_id: str, text: str, image: bytes | None, model_key: str, embedding: np.ndarray) -> int:
        errors = self._psycopg.errors
        with self._lock:
            try:
                self._connection()
                with self._db.transaction():
                    self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))
                    row = self._db.execute(
                        "INSERT INTO pmmrec_items (item_id, text, image) VALUES (%s, %s, %s) RETURNING seq",
                        (item_id, text, image),
                    ).fetchone()
                    self._db.execute(
                        "INSERT INTO pmmrec_embeddings VALUES (%s, %s, %s) ON CONFLICT (item_id, model_key) "
                        "DO UPDATE SET vector = EXCLUDED.vector",
                        (item_id, model_key, vector_bytes(embedding)),
                    )
            except errors.UniqueViolation:
                raise DuplicateItem(f"item id {item_id!r} already exists") from None
            except self._psycopg.Error as exc:
                raise WriteError(f"could not store item {item_id!r} in {self.location}: {str(exc).strip()}") from None
        assert row is not None
        return int(row[0])

    def items_after(self, seq: int, model_key: str) -> list[LiveItem]:
        with self._lock:
            try:
                self._connection()
                rows = self._db.execute(
                    "SELECT i.seq, i.item_id, i.text, i.image, e.vector FROM pmmrec_items i LEFT JOIN pmmrec_embeddings e "
                    "ON e.item_id = i.item_id AND e.model_key = %s WHERE i.seq > %s ORDER BY i.seq",
                    (model_key, seq),
                ).fetchall()
            except self._psycopg.Error as exc:
                raise WriteError(f"could not read live items from {self.location}: {str(exc).strip()}") from None
        return [LiveItem(int(r[0]), r[1], r[2], None if r[3] is None else bytes(r[3]), vector_from(r[4])) for r in rows]

    def put_embedding(self, item_id: str, model_key: str, embedding: np.ndarray) -> None:
        with self._lock:
            try:
                self._connection()
                self._db.execute(
                    "INSERT INTO pmmrec_embeddings VALUES (%s, %s, %s) ON CONFLICT (item_id, model_key) "
                    "DO UPDATE SET vector = EXCLUDED.vector",
                    (item_id, model_key, vector_bytes(embedding)),
                )
            except self._psycopg.Error as exc:
                raise WriteError(f"could not store the embedding of {item_id!r}: {str(exc).strip()}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
