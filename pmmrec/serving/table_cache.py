"""The catalogue's embedding table cached on disk, keyed by everything it depends on.

The key is a sha256 over: the model (for a model folder, the sha256 of every component file its manifest pins and
verification checks, so the key is known before the item encoders are loaded; for a model built in memory, each
component's type, config and weight digest from the loaded tensors, and the tokenizer's full definition), the
dataset's item-side files (items.tsv and the image LMDB, by the sha256 that dataset.json records and `load_dataset`
verifies), the dataset's recorded preprocessing and image size, the encoding batch size, device type, and the
versions of torch, pmmrec and the libraries that prepare inputs (transformers, tokenizers, pillow). Any change to one
of them gives another key, so a stale table is never reused; the file also carries a digest of its own tensor,
checked at load, so a damaged file is rebuilt instead of served.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pmmrec._version import __version__
from pmmrec.components.base import tensors_digest
from pmmrec.data import Dataset
from pmmrec.fileio import atomic_file
from pmmrec.model import PMMRec

log = logging.getLogger("pmmrec.serving")

TABLES_DIR = "tables"
_TABLE = "table"


def model_fingerprint(model: PMMRec) -> str:
    """sha256 over the model's components (type, config, weights) and tokenizer: what its embeddings depend on."""
    digest = hashlib.sha256()
    for slot, component in sorted(model.components().items()):
        digest.update(f"{slot}|{component.type_name}|".encode())
        digest.update(component.config.model_dump_json().encode())
        digest.update(tensors_digest(component.state_dict()).encode())
    if model.text is not None:
        digest.update(model.text.preprocessor.fingerprint().encode())
    return digest.hexdigest()


def manifest_fingerprint(manifest: dict[str, Any]) -> str | None:
    """sha256 over an assembled model's pinned files (slot, type, every file's sha256); None when it pins only
    the weights (an old manifest), since then its other files are not known by hash."""
    pins = {}
    for slot, entry in sorted(manifest["components"].items()):
        files = entry.get("files")
        if not files:
            return None
        pins[slot] = {"type": entry["type"], "files": dict(sorted(files.items()))}
    return "files:" + hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that turn item content into model inputs (tokenization, image decoding)."""
    versions = {}
    for name in ("transformers", "tokenizers", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def table_key_parts(model_key: str, dataset: Dataset, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Everything the catalogue table depends on, as a JSON-able mapping (recorded beside the table)."""
    files = dataset.info.get("files", {})
    return {
        "model": model_key,
        "dataset_files": {name: entry["sha256"] for name, entry in sorted(files.items()) if name != "users.tsv"},
        "items": dataset.num_items,
        "preprocessing": dataset.info.get("preprocessing", {}),
        "image_size": dataset.info.get("image_size"),
        "batch_size": batch_size,
        "device": device.type,
        "torch": torch.__version__,
        "pmmrec": __version__,
        "libraries": library_versions(),
    }


def table_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(state_dir: Path, key: str) -> Path:
    return Path(state_dir) / TABLES_DIR / f"{key[:40]}.safetensors"


def load_table(state_dir: Path, key: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached table for `key` when it exists, has `shape` and is intact; None otherwise (then rebuild)."""
    path = cache_path(state_dir, key)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        table = load_file(str(path))[_TABLE]
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("table cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if metadata.get("key") != key or tuple(table.shape) != shape or table.dtype != torch.float32:
        log.warning("table cache %s does not match this model and dataset; rebuilding it", path)
        return None
    if metadata.get("digest") != tensors_digest({_TABLE: table}):
        log.warning("table cache %s is damaged (checksum mismatch); rebuilding it", path)
        return None
    return table


def save_table(state_dir: Path, key: str, parts: dict[str, Any], table: torch.Tensor) -> Path:
    """Write the table atomically under its key, with the key's parts and a checksum in the header."""
    path = cache_path(state_dir, key)
    tensor = table.detach().float().cpu().contiguous()
    metadata = {"key": key, "parts": json.dumps(parts, sort_keys=True, default=str), "digest": tensors_digest({_TABLE: tensor})}
    payload = safetensors_bytes({_TABLE: tensor}, metadata=metadata)
    with atomic_file(path, mode="wb") as handle:
        handle.write(payload)
    return path
