"""The assembled PMMRec model: any compatible combination of components, with a lockfile-style manifest."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pmmrec import integrity
from pmmrec.cards import ComponentRow, ModelCardData, TrainingFacts, render_model_card
from pmmrec.components import (
    Component,
    Fusion,
    ItemEncoder,
    ItemTower,
    ModalityInputs,
    ModalityTokens,
    TextEncoder,
    UserEncoder,
    VisionEncoder,
)
from pmmrec.components._packed import variable_shape_attention
from pmmrec.components.base import WEIGHTS_FILE
from pmmrec.components.kinds import masked_mean
from pmmrec.data.split import write_split_record
from pmmrec.errors import ArtefactError, AssemblyError, ConfigError
from pmmrec.fileio import atomic_directory, sha256_file
from pmmrec.model.assembly import ComponentLike, assemble_parts, check_compatible
from pmmrec.model.folder import load_model_component
from pmmrec.model.manifest import (
    MANIFEST_FILE,
    ComponentSource,
    manifest_document,
    read_manifest,
    source_of,
    verify_model_files,
    write_manifest,
)
from pmmrec.modes import eval_mode
from pmmrec.ranking import RankQuery, rank_histories
from pmmrec.references import resolve_reference
from pmmrec.slots import MODALITY_SLOTS, SLOT, SLOTS, modalities_of

TEXT, VISION = SLOT["text"].name, SLOT["vision"].name  # the named arguments of before (texts=, text_ids=, ...)


@dataclass
class ItemEncoding:
    """Item embeddings [N, d], plus each modality's pooled token states (the NICL objective contrasts them)."""

    embeddings: torch.Tensor
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def text_pooled(self) -> torch.Tensor | None:
        return self.pooled.get(TEXT)

    @property
    def image_pooled(self) -> torch.Tensor | None:
        return self.pooled.get(VISION)


def named_inputs(
    text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None
) -> dict[str, ModalityInputs]:
    """The text and image inputs given by their names of before, as `embed_items(inputs=...)` takes them."""
    inputs: dict[str, ModalityInputs] = {}
    text = {name: value for name, value in (("input_ids", text_ids), ("attention_mask", text_mask)) if value is not None}
    if text:
        inputs[TEXT] = text
    if pixel_values is not None:
        inputs[VISION] = {"pixel_values": pixel_values}
    return inputs


class PMMRec(nn.Module):
    """Item tower (one encoder per modality + fusion, or ID embeddings) and a user encoder.

    Every slot of pmmrec.slots' table is an attribute (`model.text`, `model.fusion`; None when empty); components of
    slots beyond the named parameters (a modality added to the table) are given by slot name as keywords.
    """

    text: TextEncoder | None
    vision: VisionEncoder | None
    fusion: Fusion | None
    user: UserEncoder
    item_tower: ItemTower | None

    def __init__(
        self,
        user: UserEncoder,
        text: TextEncoder | None = None,
        vision: VisionEncoder | None = None,
        fusion: Fusion | None = None,
        item_tower: ItemTower | None = None,
        sources: dict[str, ComponentSource] | None = None,
        **components: Component | None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(components) - set(SLOTS))
        if unknown:
            raise TypeError(f"PMMRec() got unknown slot(s) {unknown}; slots are {', '.join(SLOTS)}")
        given = {"text": text, "vision": vision, "fusion": fusion, "user": user, "item_tower": item_tower, **components}
        check_compatible(given)
        for slot in SLOTS:  # table order: the order of parameters, state dict keys and optimiser groups
            setattr(self, slot, given.get(slot))
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

    def encoders(self) -> dict[str, ItemEncoder]:
        """The present item encoders by modality, in the slot table's order."""
        found = {modality: getattr(self, modality) for modality in MODALITY_SLOTS}
        return {modality: encoder for modality, encoder in found.items() if encoder is not None}

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
        **content: Sequence[Any] | None,
    ) -> torch.Tensor:
        """Item embeddings [N, d] (float32, on the model's device) from raw content, in eval mode.

        Texts and images are prepared by the model's own encoders (tokenizer, resize and crop); a None image is an
        item without a picture. Another modality's content is given under its encoder's `raw_name`. Like
        `SentenceTransformer.encode`, for items of any catalogue, seen or new.
        """
        if self.item_tower is not None:
            raise ConfigError("an ID-based model has no content encoder: it can only score its own catalogue")
        given = {name: values for name, values in {"texts": texts, "images": images, **content}.items() if values is not None}
        for encoder in self.encoders().values():
            if encoder.raw_name not in given:
                raise ConfigError(encoder.missing_raw)
        counts = {name: len(values) for name, values in given.items()}
        if len(set(counts.values())) > 1:
            raise ConfigError(" but ".join(f"{count} {name}" for name, count in counts.items()))
        count = next(iter(counts.values()), 0)
        device = self.device
        out = torch.zeros(count, self.dim, device=device)
        with eval_mode(self):
            for start in range(0, count, batch_size):
                stop = min(start + batch_size, count)
                inputs = {
                    modality: {
                        name: tensor.to(device)
                        for name, tensor in encoder.prepare(list(given[encoder.raw_name][start:stop])).items()
                    }
                    for modality, encoder in self.encoders().items()
                }
                out[start:stop] = self.embed_items(inputs=inputs).embeddings.float()
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
        *,
        inputs: Mapping[str, ModalityInputs] | None = None,
        prefixes: Mapping[str, torch.Tensor] | None = None,
    ) -> ItemEncoding:
        """Embed N items from prepared inputs (or IDs); a cached frozen prefix may replace raw inputs.

        `inputs` holds each modality's batch tensors (a collator's `batch.inputs`), `prefixes` the cached frozen
        prefixes of some modalities; the text and image arguments before them are the same given by name. The
        training step, the catalogue encoder and the prefix cache call this on prepared batches; `encode_items`
        prepares raw content first. Attention runs on kernels that need no per-shape setup (item batches change
        shape every step; see `variable_shape_attention`).
        """
        inputs = {**named_inputs(text_ids, text_mask, pixel_values), **(inputs or {})}
        named_prefixes = {TEXT: text_prefix, VISION: image_prefix}
        prefixes = {**{m: p for m, p in named_prefixes.items() if p is not None}, **(prefixes or {})}
        with variable_shape_attention():
            return self._embed_items(inputs, prefixes, item_indices)

    def _embed_items(
        self,
        inputs: Mapping[str, ModalityInputs],
        prefixes: Mapping[str, torch.Tensor],
        item_indices: torch.Tensor | None,
    ) -> ItemEncoding:
        if self.item_tower is not None:
            if item_indices is None:
                raise ValueError("an ID item tower needs item_indices")
            return ItemEncoding(embeddings=self.item_tower(item_indices))
        tokens: dict[str, ModalityTokens] = {}
        for modality, encoder in self.encoders().items():
            own, prefix = encoder.trim(inputs.get(modality), prefixes.get(modality))
            tokens[modality] = encoder.tokens(own, prefix)
        assert self.fusion is not None
        embeddings = self.fusion(tokens)
        pooled = {modality: masked_mean(*states) for modality, states in tokens.items()}
        return ItemEncoding(embeddings=embeddings, pooled=pooled)

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
        **others: ComponentLike,
    ) -> PMMRec:
        """Combine components given as objects or references (by slot); create what must exist and is missing.

        The notes of what was created are in `model.assembly_notes`.
        """
        unknown = sorted(set(others) - set(SLOTS))
        if unknown:
            raise TypeError(f"PMMRec.assemble() got unknown slot(s) {unknown}; slots are {', '.join(SLOTS)}")
        named = {"text": text, "vision": vision, "fusion": fusion, "user": user, "item_tower": item_tower}
        loaded, sources, notes = assemble_parts({**named, **others}, user_config)
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
