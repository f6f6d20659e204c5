"""Building a server: the catalogue table (cached), the optional ANN index (cached), the item store, the state
folder and the API key."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmmrec.data import Dataset
from pmmrec.distributed import choose_device
from pmmrec.errors import ConfigError
from pmmrec.inference import encode_catalogue, make_collator, unscored_items
from pmmrec.model import PMMRec
from pmmrec.serving.ann import AnnConfig, AnnIndex
from pmmrec.serving.options import ServeOptions
from pmmrec.serving.served_model import ServedModel
from pmmrec.serving.service import RecommenderService
from pmmrec.serving.state_dir import copy_shared_items, dataset_state_dir, default_state_dir
from pmmrec.serving.stores import open_store
from pmmrec.serving.table_cache import load_table, save_table, table_key, table_key_parts

log = logging.getLogger("pmmrec.serving")

API_KEY_ENV = "PMMREC_API_KEY"


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
    options: ServeOptions | None = None,
    *,
    manifest: dict[str, Any] | None = None,
    reference: str | None = None,
) -> RecommenderService:
    """The service over `dataset`: its table read from the cache or encoded (and cached), its live items loaded.

    Runs on `options.device`, else where the model is. A `ServedModel` still loading its item encoders goes on
    loading them in the background when the table is cached; the service answers /recommend meanwhile.
    """
    options = options or ServeOptions()
    served = ServedModel.of(model)
    device = torch.device(options.device) if options.device else served.device
    served.to(device)
    state = options.state_dir
    model_key = served.key if (state is not None or options.store_url) else ""
    shape = (dataset.num_items + 1, served.dim)
    key = parts = None
    table = None
    if state is not None:
        parts = table_key_parts(model_key, dataset, options.encode_batch_size, device)
        key = table_key(parts)
        table = load_table(state, key, shape)
        if table is not None:
            log.info("catalogue table read from the cache (%s items)", dataset.num_items)
    if table is None:
        whole = served.model()
        whole.bind_catalogue(dataset.item_ids)
        collator = make_collator(whole, dataset)
        table = encode_catalogue(
            whole, collator, dataset.num_items, device, batch_size=options.encode_batch_size, progress=not options.quiet
        )
        if state is not None and key is not None and parts is not None:
            save_table(state, key, parts, table)
    config = options.ann_config
    ann = _ann_index(config, table, state, key) if config is not None and dataset.num_items >= config.min_items else None
    unscored = None
    if "item_tower" in served.types:  # an ID tower (small: loaded at once): its never-trained rows are never served
        whole = served.model()
        whole.bind_catalogue(dataset.item_ids)
        unscored = unscored_items(whole, dataset.num_items)
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
        options=options,
        ann=ann,
        unscored=unscored.tolist() if unscored is not None else None,
    )
    store = open_store(state, options.store_url)
    if store is not None:
        loaded = service.attach_store(store, model_key, options.poll_interval)
        log.info("%s live items loaded from %s", loaded, store.location)
        if service.live is not None and service.live.skipped:
            service.notes.append(
                f"{service.live.skipped} live items in {store.location} are not served: {served.add_refusal}"
            )
    served.start_loading()
    return service


def _ann_index(config: AnnConfig, table: torch.Tensor, state: Path | None, key: str | None) -> AnnIndex:
    """The approximate index over the dataset's items: read from the cache beside the table, or built (and cached)."""
    path = None
    if state is not None and key is not None:
        path = state / "ann" / f"{key[:40]}-{config.cache_name}.index"
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
    model_ref: str, data_dir: str | Path, options: ServeOptions | None = None, *, default_state: bool = False
) -> RecommenderService:
    """Load an assembled model (folder or hub reference) and a dataset folder; read or encode the catalogue.

    `options.device` None: CUDA when available, else the CPU. With `default_state` and neither a state folder nor
    a store URL in `options`, the state is kept in `default_state_dir` (what `pmmrec serve` does): the model's
    own folder, into which the dataset folder's live items are copied once, or with `options.share_live_items` the
    dataset's folder; otherwise nothing is kept without a state folder.
    """
    from pmmrec.data import load_dataset
    from pmmrec.model import read_manifest
    from pmmrec.references import resolve_reference

    options = options or ServeOptions()
    device = choose_device(options.device)
    resolved = resolve_reference(str(model_ref))
    manifest = read_manifest(resolved.path)
    if resolved.commit is not None:
        manifest = manifest | {"resolved_commit": resolved.commit}
    served = ServedModel.from_folder(resolved.path, manifest)
    dataset = load_dataset(data_dir)
    update: dict[str, Any] = {"device": str(device)}
    notes = []
    if default_state and options.state_dir is None and not options.store_url:
        update["state_dir"] = state = default_state_dir(dataset, served.key, share=options.share_live_items)
        shared = dataset_state_dir(dataset)
        if state != shared and served.add_refusal is None and (copied := copy_shared_items(shared, state)):
            notes.append(
                f"copied the {copied} live items of {shared} (kept there for every model before live items were "
                f"kept per model) into this model's {state}; --share-live-items serves the shared ones instead"
            )
    service = build_service(
        served, dataset, options.model_copy(update=update), manifest=manifest, reference=str(model_ref)
    )
    service.notes[:0] = notes
    return service
