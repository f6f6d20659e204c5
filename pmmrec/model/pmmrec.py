"""The assembled PMMRec model: any compatible combination of components, with a lockfile-style manifest."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pmmrec import integrity
from pmmrec.cards import ComponentRow, ModelCardData, TrainingFacts, render_model_card
from pmmrec.components import Component, Fusion, ItemTower, TextEncoder, UserEncoder, VisionEncoder
from pmmrec.components._packed import variable_shape_attention
from pmmrec.components.base import WEIGHTS_FILE
from pmmrec.components.kinds import masked_mean
from pmmrec.data.split import SPLIT_RECORD, read_split_record, write_split_record
from pmmrec.errors import ArtefactError, AssemblyError, ConfigError
from pmmrec.fileio import atomic_directory, sha256_file
from pmmrec.model.assembly import ComponentLike, assemble_parts, check_compatible
from pmmrec.model.manifest import (
    MANIFEST_FILE,
    ComponentSource,
    check_component_claims,
    manifest_document,
    read_manifest,
    source_of,
    verify_model_files,
    write_manifest,
)
from pmmrec.modes import eval_mode
from pmmrec.ranking import RankQuery, rank_histories
from pmmrec.references import resolve_reference
from pmmrec.slots import SLOTS, modalities_of


@dataclass
class ItemEncoding:
    """Item embeddings [N, d], plus per-modality pooled states used by the NICL objective."""

    embeddings: torch.Tensor
    text_pooled: torch.Tensor | None = None
    image_pooled: torch.Tensor | None = None


class PMMRec(nn.Module):
    """Item tower (text and/or vision encoders + fusion, or ID embeddings) and a user encoder."""

    def __init__(
        self,
        user: UserEncoder,
        text: TextEncoder | None = None,
        vision: VisionEncoder | None = None,
        fusion: Fusion | None = None,
        item_tower: ItemTower | None = None,
        sources: dict[str, ComponentSource] | None = None,
    ) -> None:
        super().__init__()
        check_compatible({"text": text, "vision": vision, "fusion": fusion, "user": user, "item_tower": item_tower})
        self.text = text
        self.vision = vision
        self.fusion = fusion
        self.user = user
        self.item_tower = item_tower
        self.sources: dict[str, ComponentSource] = sources or {}
        self.assembly_notes: list[str] = []

    # ---- structure ----------------------------------------------------------------------------

    def components(self) -> dict[str, Component]:
        """The present components by slot name."""
        slots = {slot: getattr(self, slot) for slot in SLOTS}
        return {slot: component for slot, component in slots.items() if component is not None}

    @property
    def modalities(self) -> frozenset[str]:
        """Which item modalities the model reads: {'text'}, {'vision'}, both, or {'id'}."""
        return modalities_of(self.components())

    @property
    def dim(self) -> int:
        return self.user.dim

    @property
    def max_length(self) -> int:
        """The longest history the user encoder reads."""
        return self.user.max_length

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.parameters()).device

    def bind_catalogue(self, item_ids: Sequence[str]) -> None:
        """Read a dataset's catalogue indices (1..N, in `item_ids` order) from now on.

        An ID item tower looks its rows up by item id, never by position (and refuses ids it has no row for); a
        content model reads items by their content, so there is nothing to bind.
        """
        if self.item_tower is not None:
            self.item_tower.bind_catalogue(item_ids)

    # ---- forward pieces -----------------------------------------------------------------------

    @torch.inference_mode()
    def encode_items(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Image.Image | np.ndarray | None] | None = None,
        *,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Item embeddings [N, d] (float32, on the model's device) from raw content, in eval mode.

        Texts and images are prepared by the model's own encoders (tokenizer, resize and crop); a None image is an
        item without a picture. Like `SentenceTransformer.encode`, for items of any catalogue, seen or new.
        """
        if self.item_tower is not None:
            raise ConfigError("an ID-based model has no content encoder: it can only score its own catalogue")
        count = len(texts) if texts is not None else len(images) if images is not None else 0
        if self.text is not None and texts is None:
            raise ConfigError("this model reads item texts: give texts=")
        if self.vision is not None and images is None:
            raise ConfigError("this model reads item images: give images= (None for an item without one)")
        if texts is not None and images is not None and len(texts) != len(images):
            raise ConfigError(f"{len(texts)} texts but {len(images)} images")
        device = self.device
        out = torch.zeros(count, self.dim, device=device)
        with eval_mode(self):
            for start in range(0, count, batch_size):
                stop = min(start + batch_size, count)
                text_ids = text_mask = pixels = None
                if self.text is not None and texts is not None:
                    text_ids, text_mask = self.text.tokenize(list(texts[start:stop]))
                    text_ids, text_mask = text_ids.to(device), text_mask.to(device)
                if self.vision is not None and images is not None:
                    pixels = self.vision.preprocessor(list(images[start:stop])).to(device)
                out[start:stop] = self.embed_items(text_ids, text_mask, pixels).embeddings.float()
        return out

    @torch.inference_mode()
    def recommend(
        self, history: Sequence[int], candidates: torch.Tensor, k: int = 10, *, exclude_seen: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best candidates after a history: (scores [k'], indices into `candidates` [k']), best first.

        `candidates` [N, d] are item embeddings (from `encode_items`, or any catalogue table); `history` holds
        indices into them (0-based rows), oldest first, of which the last `max_length` are read. `exclude_seen` leaves
        the history's items out. Like `sentence_transformers.util.semantic_search`, for a user instead of a query.
        Ranked by `pmmrec.ranking.rank_histories`, whose catalogue indices are these rows + 1 (row 0 is padding).
        """
        if not len(history):
            raise ConfigError("the history is empty: give at least one item")
        if candidates.dim() != 2 or candidates.shape[1] != self.dim:
            raise ConfigError(f"candidates must be [N, {self.dim}] item embeddings, got {tuple(candidates.shape)}")
        count = candidates.shape[0]
        if any(not 0 <= int(index) < count for index in history):
            raise ConfigError(f"history indices must lie in 0..{count - 1} (rows of candidates)")
        table = torch.cat([candidates.new_zeros(1, self.dim), candidates]).to(device=self.device, dtype=torch.float32)
        rows = [int(index) + 1 for index in history]  # candidate rows -> catalogue indices (row 0 is padding)
        query = RankQuery(rows, k, exclude=sorted(set(rows)) if exclude_seen else ())
        with eval_mode(self):
            (ranking,) = rank_histories(self.user, table, [query], max_length=self.max_length)
        return ranking.scores, ranking.indices - 1

    def embed_items(
        self,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        item_indices: torch.Tensor | None = None,
        text_prefix: torch.Tensor | None = None,
        image_prefix: torch.Tensor | None = None,
    ) -> ItemEncoding:
        """Embed N items from prepared inputs (or IDs); a cached frozen prefix may replace raw inputs.

        The training step, the catalogue encoder and the prefix cache call this on prepared batches; `encode_items`
        prepares raw texts and images first. Attention runs on kernels that need no per-shape setup (item batches
        change shape every step; see `variable_shape_attention`).
        """
        with variable_shape_attention():
            return self._embed_items(text_ids, text_mask, pixel_values, item_indices, text_prefix, image_prefix)

    def _embed_items(
        self,
        text_ids: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        item_indices: torch.Tensor | None,
        text_prefix: torch.Tensor | None,
        image_prefix: torch.Tensor | None,
    ) -> ItemEncoding:
        if self.item_tower is not None:
            if item_indices is None:
                raise ValueError("an ID item tower needs item_indices")
            return ItemEncoding(embeddings=self.item_tower(item_indices))
        text_tokens = image_tokens = None
        if self.text is not None:
            if text_mask is None:
                raise ValueError("the text encoder needs text_mask")
            # Drop token columns that are padding for every item of the batch: same result, less work.
            width = max(int(text_mask.sum(dim=1).max()), 1) if text_mask.shape[0] else text_mask.shape[1]
            text_mask = text_mask[:, :width]
            text_ids = text_ids[:, :width] if text_ids is not None else None
            text_prefix = text_prefix[:, :width] if text_prefix is not None else None
            if text_prefix is not None:
                text_tokens, text_mask = self.text.forward_from_prefix(text_prefix, text_mask)
            elif text_ids is not None:
                text_tokens, text_mask = self.text(text_ids, text_mask)
            else:
                raise ValueError("the text encoder needs text_ids (or a cached prefix)")
        if self.vision is not None:
            if image_prefix is not None:
                image_tokens = self.vision.forward_from_prefix(image_prefix)
            elif pixel_values is not None:
                image_tokens = self.vision(pixel_values)
            else:
                raise ValueError("the vision encoder needs pixel_values (the dataset has no images.lmdb?)")
        assert self.fusion is not None
        embeddings = self.fusion(text_tokens=text_tokens, text_mask=text_mask, image_tokens=image_tokens)
        return ItemEncoding(
            embeddings=embeddings,
            text_pooled=masked_mean(text_tokens, text_mask) if text_tokens is not None else None,
            image_pooled=masked_mean(image_tokens, None) if image_tokens is not None else None,
        )

    def encode_users(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User states [B, S, d] for left-padded sequences of item embeddings."""
        return self.user(item_embeddings, mask)

    # ---- assembly -----------------------------------------------------------------------------

    @classmethod
    def assemble(
        cls,
        text: ComponentLike = None,
        vision: ComponentLike = None,
        fusion: ComponentLike = None,
        user: ComponentLike = None,
        item_tower: ComponentLike = None,
        user_config: dict[str, Any] | None = None,
    ) -> PMMRec:
        """Combine components given as objects or references; create what must exist and is missing.

        The notes of what was created are in `model.assembly_notes`.
        """
        references = {"text": text, "vision": vision, "fusion": fusion, "user": user, "item_tower": item_tower}
        loaded, sources, notes = assemble_parts(references, user_config)
        model = cls(sources=sources, **{slot: component for slot, component in loaded.items()})  # type: ignore[arg-type]
        model.assembly_notes = notes
        return model

    # ---- persistence --------------------------------------------------------------------------

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        card: TrainingFacts | None = None,
        split_record: Mapping[str, Any] | None = None,
    ) -> Path:
        """One subfolder per component plus pmmrec.json; atomic, never a silent overwrite.

        `split_record` (how a training run split the data) is written as data_split.json inside the folder before it
        is renamed into place, and pinned by pmmrec.json like every other file pmmrec reads.
        """
        target = Path(directory)
        components = self.components()
        with atomic_directory(target, overwrite=overwrite) as staging:
            hashes, files, model_files = {}, {}, {}
            for slot, component in components.items():
                component.save_pretrained(staging / slot, card=card)
                hashes[slot] = sha256_file(staging / slot / WEIGHTS_FILE)
                files[slot] = integrity.file_checksums(staging / slot)
            if split_record is not None:
                written = write_split_record(staging, dict(split_record))
                model_files[written.name] = sha256_file(written)
            types = {slot: component.type_name for slot, component in components.items()}
            document = manifest_document(
                self.dim, sorted(self.modalities), types, self.sources, hashes, files, model_files
            )
            write_manifest(staging, document)
            (staging / "README.md").write_text(render_model_card(self.card_data(document, card)), encoding="utf-8")
        return target

    @staticmethod
    def card_data(document: dict[str, Any], facts: TrainingFacts | None = None) -> ModelCardData:
        """The typed content of an assembled model's card, from its manifest."""
        rows = tuple(
            ComponentRow(
                slot=slot,
                type_name=entry["type"],
                requested=entry.get("requested"),
                created=bool(entry.get("created")),
                resolved_commit=entry.get("resolved_commit"),
                sha256=entry["sha256"],
            )
            for slot, entry in document["components"].items()
        )
        return ModelCardData(
            dim=document["dim"], modalities=tuple(document["modalities"]), components=rows, facts=facts or TrainingFacts()
        )

    @classmethod
    def from_pretrained(
        cls,
        reference: str | os.PathLike[str],
        revision: str | None = None,
        *,
        unverified: bool = False,
        preloaded: Mapping[str, Component] | None = None,
    ) -> PMMRec:
        """Reload an assembled model folder (or hub reference); every file's hash is verified first.

        `unverified=True` loads a model whose manifest pins only the weights (written before pmmrec kept checksums)
        or whose files changed. `preloaded` holds components already loaded from this folder by slot (a server
        loads the user encoder first); they are used as they are.
        """
        resolved = resolve_reference(str(reference), revision=revision)
        manifest = read_manifest(resolved.path)
        verify_model_files(resolved.path, manifest, unverified=unverified)
        loaded: dict[str, Component] = {}
        sources: dict[str, ComponentSource] = {}
        for slot, entry in manifest["components"].items():
            component = (preloaded or {}).get(slot)
            if component is None:
                component = load_model_component(resolved.path, manifest, slot, unverified=unverified)
            elif component.type_name != entry["type"]:
                raise ArtefactError(f"preloaded {slot}: is {component.type_name!r} but {MANIFEST_FILE} says {entry['type']!r}")
            loaded[slot] = component
            sources[slot] = source_of(entry)
        if "user" not in loaded:
            raise ArtefactError(f"{resolved.path / MANIFEST_FILE}: no user component")
        try:
            model = cls(sources=sources, **loaded)  # type: ignore[arg-type]
        except AssemblyError as exc:
            raise ArtefactError(f"{resolved.path / MANIFEST_FILE}: {exc}") from None
        model.eval()
        return model


def load_model_component(folder: Path, manifest: dict[str, Any], slot: str, *, unverified: bool = False) -> Component:
    """One component of an assembled model folder, its files verified against the manifest's pins."""
    entry = manifest["components"][slot]
    checksums = integrity.manifest_checksums(entry, slot, str(folder / MANIFEST_FILE), unverified)
    path = folder / entry["path"]
    component = Component.from_folder(path, unverified=unverified, checksums=checksums, checksums_source=MANIFEST_FILE)
    if component.type_name != entry["type"]:
        raise ArtefactError(f"{path}: is {component.type_name!r} but {MANIFEST_FILE} says {entry['type']!r}")
    check_component_claims(manifest, folder, slot, component.dim)
    return component


def read_model_split_record(folder: str | os.PathLike[str], *, unverified: bool = False) -> dict[str, Any] | None:
    """data_split.json of a trained model folder (None for an assembled, untrained one), verified against the
    sha256 pmmrec.json pins for it before it is read, then validated strictly (types and ranges)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_model_files(folder, manifest, unverified=unverified, reading=(SPLIT_RECORD,))
    return read_split_record(folder)
