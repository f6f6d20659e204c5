"""Building and running a server: the catalogue table (cached), the optional ANN index (cached), the item store,
and uvicorn with a graceful shutdown (SIGTERM finishes in-flight requests, then the store is closed)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pmmrec.data import Dataset
from pmmrec.errors import ConfigError
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec
from pmmrec.serving.ann import AnnConfig, AnnIndex, Backend
from pmmrec.serving.limits import LIMITS, Limits
from pmmrec.serving.served_model import ServedModel
from pmmrec.serving.service import RecommenderService
from pmmrec.serving.stores import open_store
from pmmrec.serving.table_cache import load_table, save_table, table_key, table_key_parts

log = logging.getLogger("pmmrec.serving")

API_KEY_ENV = "PMMREC_API_KEY"
STATE_ENV = "PMMREC_STATE"


class ServeOptions(BaseModel):
    """How a server keeps its state and ranks: durability, caches, batching, approximate search."""

    model_config = ConfigDict(extra="forbid")

    state_dir: Path | None = Field(
        default=None,
        description="Folder for live items (items.sqlite3) and the table and index caches; None keeps nothing.",
    )
    store_url: str | None = Field(
        default=None, description="postgresql:// URL of a store shared by replicas (instead of SQLite in state_dir)."
    )
    poll_interval: float = Field(
        default=1.0, ge=0, description="Seconds between looks for items other replicas added (0: never look)."
    )
    batching: bool = Field(default=True, description="Rank concurrent /recommend requests together.")
    max_batch: int = Field(default=64, ge=1, le=4096, description="Most requests ranked in one batch.")
    batch_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Longest wait for more requests already in flight before ranking."
    )
    batch_workers: int = Field(
        default=2, ge=1, le=64, description="Threads ranking batches side by side (2: one per core of a small machine)."
    )
    ann: Backend | None = Field(default=None, description="Approximate search backend (faiss, usearch, hnswlib).")
    ann_min_items: int = Field(
        default=AnnConfig().min_items, ge=0, description="Catalogue size from which the ANN index is built and used."
    )
    ann_ef_search: int = Field(default=AnnConfig().ef_search, ge=8, description="HNSW search depth (recall vs cost).")


def default_state_dir(dataset: Dataset) -> Path:
    """$PMMREC_STATE, else $XDG_STATE_HOME/pmmrec (~/.local/state/pmmrec), then serve/NAME-HASH for the dataset.

    HASH is the start of the sha256 of the dataset's items.tsv, so each catalogue keeps its own live items and a
    dataset rebuilt with them merged in starts with an empty store.
    """
    root = os.environ.get(STATE_ENV) or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "pmmrec"
    items = dataset.info.get("files", {}).get("items.tsv", {}).get("sha256", "")
    suffix = items[:12] or hashlib.sha256("\n".join(dataset.item_ids).encode()).hexdigest()[:12]
    return Path(root) / "serve" / f"{dataset.name}-{suffix}"


def read_api_key(path: Path | str | None) -> str | None:
    """The API key for POST /items: the first line of `path`, else $PMMREC_API_KEY, else None (no auth)."""
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {path}: cannot read it ({exc})") from None
        if not key or len(key) < 16:
            raise ConfigError(f"--api-key-file {path}: the key must be at least 16 characters")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key and len(key) < 16:
        raise ConfigError(f"${API_KEY_ENV}: the key must be at least 16 characters")
    return key or None


def build_service(
    model: PMMRec | ServedModel,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
    manifest: dict[str, Any] | None = None,
    reference: str | None = None,
    limits: Limits = LIMITS,
    max_parallel: int | None = None,
    options: ServeOptions | None = None,
) -> RecommenderService:
    """The service over `dataset`: its table read from the cache or encoded (and cached), its live items loaded.

    A `ServedModel` still loading its item encoders goes on loading them in the background when the table is
    cached; the service answers /recommend meanwhile.
    """
    options = options or ServeOptions()
    device = torch.device(device)
    served = ServedModel.of(model)
    served.to(device)
    state = options.state_dir
    model_key = served.key if (state is not None or options.store_url) else ""
    shape = (dataset.num_items + 1, served.dim)
    key = parts = None
    table = None
    if state is not None:
        parts = table_key_parts(model_key, dataset, batch_size, device)
        key = table_key(parts)
        table = load_table(state, key, shape)
        if table is not None:
            log.info("catalogue table read from the cache (%s items)", dataset.num_items)
    if table is None:
        whole = served.model()
        whole.bind_catalogue(dataset.item_ids)
        collator = make_collator(whole, dataset)
        table = encode_catalogue(whole, collator, dataset.num_items, device, batch_size=batch_size, progress=progress)
        if state is not None and key is not None and parts is not None:
            save_table(state, key, parts, table)
    ann = None
    if options.ann is not None and dataset.num_items >= options.ann_min_items:
        ann = _ann_index(options, table, state, key)
    service = RecommenderService(
        served,
        list(dataset.item_ids),
        list(dataset.item_texts),
        table.to(device),
        users={user: np.asarray(seq, dtype=np.int64) for user, seq in zip(dataset.user_ids, dataset.sequences, strict=True)},
        image_store=dataset.image_store(),
        items_without_images=set(dataset.info.get("items_without_images", [])),
        dataset_name=dataset.name,
        manifest=manifest,
        reference=reference,
        limits=limits,
        max_parallel=max_parallel,
        batching=options.batching,
        max_batch=options.max_batch,
        batch_wait_ms=options.batch_wait_ms,
        batch_workers=options.batch_workers,
        ann=ann,
    )
    store = open_store(state, options.store_url)
    if store is not None:
        loaded = service.attach_store(store, model_key, options.poll_interval)
        log.info("%s live items loaded from %s", loaded, store.location)
    served.start_loading()
    return service


def _ann_index(options: ServeOptions, table: torch.Tensor, state: Path | None, key: str | None) -> AnnIndex:
    """The HNSW graph over the dataset's items: read from the cache beside the table, or built (and cached)."""
    config = AnnConfig(backend=options.ann, ef_search=options.ann_ef_search, min_items=options.ann_min_items)  # type: ignore[arg-type]
    path = None
    if state is not None and key is not None:
        path = state / "ann" / f"{key[:40]}-{config.backend}-M{config.connectivity}-efc{config.ef_construction}.index"
        if path.is_file():
            try:
                index = AnnIndex.load(config, table.shape[1], path, table.shape[0] - 1)
                if len(index) == table.shape[0] - 1:
                    log.info("ANN index read from the cache %s", path)
                    return index
            except Exception as exc:  # a damaged cache is rebuilt
                log.warning("ANN index cache %s is unusable (%s); rebuilding it", path, exc)
    index = AnnIndex.build(config, table.cpu())
    if path is not None:
        index.save(path)
    return index


def load_service(
    model_ref: str,
    data_dir: str | Path,
    *,
    device: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    max_parallel: int | None = None,
    options: ServeOptions | None = None,
    default_state: bool = False,
) -> RecommenderService:
    """Load an assembled model (folder or hub reference) and a dataset folder; read or encode the catalogue.

    With `default_state` and neither a state folder nor a store URL in `options`, the state is kept in
    `default_state_dir(dataset)` (what `pmmrec serve` does); otherwise nothing is kept without a state folder.
    """
    from pmmrec.data import load_dataset
    from pmmrec.model import read_manifest
    from pmmrec.references import resolve_reference

    resolved = resolve_reference(str(model_ref))
    manifest = read_manifest(resolved.path)
    if resolved.commit is not None:
        manifest = manifest | {"resolved_commit": resolved.commit}
    served = ServedModel.from_folder(resolved.path, manifest)
    dataset = load_dataset(data_dir)
    options = options or ServeOptions()
    if default_state and options.state_dir is None and not options.store_url:
        options = options.model_copy(update={"state_dir": default_state_dir(dataset)})
    return build_service(
        served,
        dataset,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        batch_size=batch_size,
        progress=progress,
        manifest=manifest,
        reference=str(model_ref),
        max_parallel=max_parallel,
        options=options,
    )


