"""Where `pmmrec serve` keeps its state when no `--state` is given, and the one-time copy of live items stored
before they were kept per model.

The default state folder is per dataset and per model: `ROOT/serve/NAME-HASH/model-KEY`, so live items added to one
model are not served by another model of the same data (issue 26). `--share-live-items` keeps them in the
dataset's own folder, `ROOT/serve/NAME-HASH`, shared by every model served with that flag, which is where every
model kept them before. A model's first start in its own folder copies the items found there (a user's live items
are data they added: never lost), and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

from pmmrec.data import Dataset
from pmmrec.recovery import fsync_dir
from pmmrec.serving.store import ITEMS_DB

STATE_ENV = "PMMREC_STATE"


def state_root() -> Path:
    """$PMMREC_STATE, else $XDG_STATE_HOME/pmmrec (~/.local/state/pmmrec)."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "pmmrec"


def dataset_state_dir(dataset: Dataset) -> Path:
    """ROOT/serve/NAME-HASH: HASH is the start of the sha256 of the dataset's items.tsv, so each catalogue keeps its
    own live items and a dataset rebuilt with them merged in starts with none."""
    items = dataset.info.get("files", {}).get("items.tsv", {}).get("sha256", "")
    suffix = items[:12] or hashlib.sha256("\n".join(dataset.item_ids).encode()).hexdigest()[:12]
    return state_root() / "serve" / f"{dataset.name}-{suffix}"


def model_folder_name(model_key: str) -> str:
    """model-KEY: the start of the sha256 of the model's key (its pinned files, or its weights for a model built in
    memory)."""
    return "model-" + hashlib.sha256(model_key.encode()).hexdigest()[:12]


def default_state_dir(dataset: Dataset, model_key: str | None = None, *, share: bool = False) -> Path:
    """The dataset's state folder (shared by models: `share`, or no model key given), else the model's own in it."""
    shared = dataset_state_dir(dataset)
    return shared if share or model_key is None else shared / model_folder_name(model_key)


def count_items(path: Path) -> int:
    """How many live items an items.sqlite3 holds (0 when absent or unreadable); it is only read."""
    if not path.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30.0)) as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.Error:
        return 0


def copy_shared_items(shared_dir: Path, own_dir: Path) -> int:
    """Copy the dataset folder's live items into a model's own folder once, before the model's store is opened.

    Nothing happens when the model's store exists (a later start, or another process copied first) or the shared
    store is empty. The copy is SQLite's online backup into a temporary file, then a hard link to the final name,
    which fails rather than replace a store another process has just created: no item is lost or duplicated.
    The shared store is left as it was. Returns how many items were copied.
    """
    source, target = shared_dir / ITEMS_DB, own_dir / ITEMS_DB
    if target.exists() or count_items(source) == 0:
        return 0
    own_dir.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{ITEMS_DB}.", suffix=".copy", dir=own_dir)
    os.close(handle)
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=30.0)) as src,
            contextlib.closing(sqlite3.connect(staging)) as dst,
        ):
            src.backup(dst)
            copied = int(dst.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        with open(staging, "rb") as written:
            os.fsync(written.fileno())
        try:
            os.link(staging, target)
        except FileExistsError:
            return 0
        fsync_dir(own_dir)
        return copied
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
