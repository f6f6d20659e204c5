"""Which live-item store a server opens: SQLite in its state folder by default, PostgreSQL for several replicas."""

from __future__ import annotations

from pathlib import Path

from pmmrec.errors import ConfigError
from pmmrec.serving.store import ITEMS_DB, ItemStore, SQLiteItemStore


def open_store(state_dir: Path | None, url: str | None = None) -> ItemStore | None:
    """The store for `--store URL` (postgresql://...), else SQLite in `state_dir`, else None (memory only)."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"--store {url!r}: only postgresql:// URLs are supported (SQLite is the default)")
        from pmmrec.serving.store_postgres import PostgresItemStore

        return PostgresItemStore(url)
    if state_dir is None:
        return None
    return SQLiteItemStore(Path(state_dir) / ITEMS_DB)
