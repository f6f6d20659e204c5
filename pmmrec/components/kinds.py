"""The component kinds and their contracts: everything a caller uses of a component is declared here.

Concrete types live one per file beside this one. Callers (the model, the data collator, the prefix cache, the
server) use only what the kind declares, never a type's private members.

An item encoder is the encoder of one *modality* (a row of pmmrec.slots' table): besides its own typed methods
(`TextEncoder.tokenize`, `VisionEncoder.frozen_prefix(pixel_values)`) it speaks one generic contract, through which
the model, the training step, the prefix cache and the catalogue encoder handle every modality alike: raw content
-> `prepare` -> named batch tensors (`ModalityInputs`) -> `frozen_prefix_of` / `tokens` -> `ModalityTokens`. A new
modality's kind declares that contract (and registers itself with `register_kind`) in its own file.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from pydantic import Field
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components._vision import VisionPreprocessingFields, check_preprocessing
from pmmrec.components.base import Component, ComponentConfig
from pmmrec.components.inputs import ImagePreprocessor, TextPreprocessor
from pmmrec.components.options import CreateOptions
from pmmrec.errors import ConfigError
from pmmrec.slots import SLOT, SLOT_TABLE

V = TypeVar("V", bound="VisionEncoder")
K = TypeVar("K", bound=type[Component])

# One modality's batch tensors by name, one row per item (text: input_ids and attention_mask; vision: pixel_values).
ModalityInputs = dict[str, torch.Tensor]


class ModalityTokens(NamedTuple):
    """One modality's projected token states [N, T, d] and their boolean mask [N, T] (None: every token is real)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None


_KIND_CLASSES: dict[str, type[Component]] = {}


def register_kind(cls: K) -> K:
    """Class decorator: `cls` declares the contract of the slot whose type prefix is `cls.kind` (kind_classes)."""
    _KIND_CLASSES[cls.kind] = cls
    return cls


class EncoderConfig(ComponentConfig):
    """Fields every item encoder's config has."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Output width d (item embedding size).")
    trainable_layers: int = Field(
        default=2,
        ge=0,
        le=_backbones.MAX_LAYERS,
        description="Top backbone layers (blocks) trained; the rest is frozen (paper: 2).",
    )


class ItemEncoder(Component):
    """An encoder of item content whose bottom can be frozen; frozen modules stay in eval mode (a fixed function).

    Keeping frozen layers deterministic (no dropout, no BatchNorm statistics updates) is what makes their output
    cacheable per item: `frozen_prefix` computes it, `forward_from_prefix` runs the trainable rest on it.
    """

    config: EncoderConfig
    modality: ClassVar[str]  # its slot (pmmrec.slots), which is the modality's name
    raw_name: ClassVar[str]  # the keyword `PMMRec.encode_items` takes its raw content by (texts, images)
    missing_raw: ClassVar[str]  # what `encode_items` says when that content is not given

    # ---- the generic modality contract --------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, raw: Sequence[Any]) -> ModalityInputs:
        """Raw content of N items (texts, images, ...) -> this encoder's batch tensors, through its preprocessor."""

    @abstractmethod
    def frozen_prefix_of(self, inputs: ModalityInputs) -> torch.Tensor:
        """The frozen bottom's output on prepared inputs: cacheable per item (see `frozen_prefix`)."""

    @abstractmethod
    def tokens(self, inputs: ModalityInputs | None, prefix: torch.Tensor | None = None) -> ModalityTokens:
        """Projected token states and their mask from prepared inputs, or from a cached frozen prefix (when given,
        only what the trainable top needs of `inputs` is read, e.g. the token mask)."""

    def trim(
        self, inputs: ModalityInputs | None, prefix: torch.Tensor | None
    ) -> tuple[ModalityInputs | None, torch.Tensor | None]:
        """Inputs (and prefix) without positions that are padding for every item of the batch: the same result,
        less work. Nothing to drop by default."""
        return inputs, prefix

    # ---- layers -------------------------------------------------------------------------------------------

    @property
    def trainable_layers(self) -> int:
        """How many top layers (blocks) of the backbone are trained."""
        return self.config.trainable_layers

    def set_trainable_layers(self, layers: int) -> None:
        """Train the top `layers` layers (blocks), freeze the rest; the config records the new value (validated)."""
        self.config = type(self.config).model_validate({**self.config.model_dump(), "trainable_layers": layers})
        self.apply_freezing()

    @abstractmethod
    def apply_freezing(self) -> None:
        """Set requires_grad (and eval mode of frozen modules) as the config says."""

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Layers (blocks) of the backbone in all, trained or frozen."""

    @property
    @abstractmethod
    def frozen_depth(self) -> int:
        """How many bottom layers (blocks) are frozen; 0 when nothing below the trained top is frozen."""

    @abstractmethod
    def frozen_modules(self) -> list[nn.Module]:
        """The modules of the frozen prefix (kept in eval mode; their weights key the prefix cache)."""

    @property
    def has_frozen_prefix(self) -> bool:
        """Whether some bottom layers are frozen, so their output can be cached per item."""
        return self.frozen_depth > 0

    def train(self, mode: bool = True) -> ItemEncoder:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self


@register_kind
class TextEncoder(ItemEncoder):
    """Token ids of an item's text -> projected token states [N, T, d] and their mask."""

    kind: ClassVar[str] = SLOT["text"].type_prefix
    modality: ClassVar[str] = SLOT["text"].name
    raw_name: ClassVar[str] = "texts"
    missing_raw: ClassVar[str] = "this model reads item texts: give texts="

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        return "hf"

    @property
    @abstractmethod
    def preprocessor(self) -> TextPreprocessor:
        """How raw texts become this encoder's inputs (its tokenizer and width)."""

    @property
    def max_tokens(self) -> int:
        """Input width: tokens kept per item text."""
        return self.preprocessor.max_tokens

    # A trained embedding per word piece, added to each projected token; every text encoder sets it (None: none;
    # `add_word_embeddings_table`). Not a class attribute: nn.Module finds a registered submodule only when normal
    # attribute lookup fails.
    word_embeddings: nn.Module | None

    def add_word_embeddings_table(self) -> None:
        """Give this encoder a trained embedding per word piece, zero at first (its function unchanged until it
        trains); nothing when it has one."""
        raise ConfigError(f"{self.type_name} has no word-piece embeddings to add")

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (int32) and boolean mask [N, max_tokens] for raw texts."""
        return self.preprocessor(texts)

    @abstractmethod
    def frozen_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the frozen bottom [N, T, hidden]: cacheable per item."""

    @abstractmethod
    def forward_from_prefix(
        self, prefix: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable top and the projection on a (possibly cached) prefix: tokens [N, T, d] and mask [N, T]."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected token states [N, T, d] and the boolean token mask [N, T]."""
        return self.forward_from_prefix(self.frozen_prefix(input_ids, attention_mask), attention_mask)

    # ---- the generic modality contract: inputs `input_ids` and `attention_mask` -------------------------

    def prepare(self, raw: Sequence[Any]) -> ModalityInputs:
        input_ids, attention_mask = self.tokenize(list(raw))
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def frozen_prefix_of(self, inputs: ModalityInputs) -> torch.Tensor:
        return self.frozen_prefix(inputs["input_ids"], inputs["attention_mask"])

    def tokens(self, inputs: ModalityInputs | None, prefix: torch.Tensor | None = None) -> ModalityTokens:
        mask = (inputs or {}).get("attention_mask")
        if mask is None:
            raise ValueError("the text encoder needs text_mask")
        if prefix is not None:
            return ModalityTokens(*self.forward_from_prefix(prefix, mask))
        input_ids = (inputs or {}).get("input_ids")
        if input_ids is None:
            raise ValueError("the text encoder needs text_ids (or a cached prefix)")
        return ModalityTokens(*self(input_ids, mask))

    def trim(
        self, inputs: ModalityInputs | None, prefix: torch.Tensor | None
    ) -> tuple[ModalityInputs | None, torch.Tensor | None]:
        """Token columns that are padding for every item are dropped (texts are short and uneven)."""
        mask = (inputs or {}).get("attention_mask")
        if mask is None:
            raise ValueError("the text encoder needs text_mask")
        width = max(int(mask.sum(dim=1).max()), 1) if mask.shape[0] else mask.shape[1]
        trimmed = {name: tensor[:, :width] for name, tensor in (inputs or {}).items()}
        return trimmed, prefix[:, :width] if prefix is not None else None


@register_kind
class VisionEncoder(ItemEncoder):
    """uint8 images [N, 3, S, S] -> projected image tokens [N, P, d]."""

    kind: ClassVar[str] = SLOT["vision"].type_prefix
    modality: ClassVar[str] = SLOT["vision"].name
    raw_name: ClassVar[str] = "images"
    missing_raw: ClassVar[str] = "this model reads item images: give images= (None for an item without one)"

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        """EfficientNet-Lite for its built-in names (the default), CLIP for any other backbone."""
        backbone = options.backbone or "efficientnet-lite0"
        return "efficientnet" if backbone.startswith("efficientnet-") else "clip"

    @classmethod
    def build_for_loading(cls: type[V], config: ComponentConfig, folder: Path) -> V:
        """Check preprocessing.json against the config first (one place for that file: `_vision`)."""
        assert isinstance(config, VisionPreprocessingFields)
        check_preprocessing(folder, config)
        return super().build_for_loading(config, folder)  # type: ignore[return-value]

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Input size: side of the square images the encoder reads."""

    @property
    def preprocessor(self) -> ImagePreprocessor:
        """How raw images become this encoder's inputs (resize and crop to `image_size`)."""
        return ImagePreprocessor(self.image_size)

    @abstractmethod
    def frozen_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the frozen bottom for uint8 images: cacheable per item."""

    @abstractmethod
    def forward_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """The trainable top and the projection on a (possibly cached) prefix: image tokens [N, P, d]."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image tokens [N, P, d]."""
        return self.forward_from_prefix(self.frozen_prefix(pixel_values))

    # ---- the generic modality contract: input `pixel_values` ---------------------------------------------

    def prepare(self, raw: Sequence[Any]) -> ModalityInputs:
        return {"pixel_values": self.preprocessor(list(raw))}

    def frozen_prefix_of(self, inputs: ModalityInputs) -> torch.Tensor:
        return self.frozen_prefix(inputs["pixel_values"])

    def tokens(self, inputs: ModalityInputs | None, prefix: torch.Tensor | None = None) -> ModalityTokens:
        if prefix is not None:
            return ModalityTokens(self.forward_from_prefix(prefix), None)
        pixel_values = (inputs or {}).get("pixel_values")
        if pixel_values is None:
            raise ValueError("the vision encoder needs pixel_values (the dataset has no images.lmdb?)")
        return ModalityTokens(self(pixel_values), None)


@register_kind
class Fusion(Component):
    """Modality tokens -> one item embedding [N, d]; declares which modalities it needs."""

    kind: ClassVar[str] = SLOT["fusion"].type_prefix
    modalities: frozenset[str]  # what it reads: a class attribute, or a property when its config says

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        """Merge-attention, the paper's fusion."""
        return "merge_attention"

    @abstractmethod
    def forward(self, tokens: Mapping[str, ModalityTokens]) -> torch.Tensor:
        """One embedding per item [N, d] from the token states of the modalities this fusion reads (by name)."""


@register_kind
class UserEncoder(Component):
    """Item embeddings of a left-padded sequence [B, S, d] -> user state at every position [B, S, d]."""

    kind: ClassVar[str] = SLOT["user"].type_prefix

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        return "sasrec"

    @property
    @abstractmethod
    def max_length(self) -> int:
        """The longest sequence the encoder reads."""

    @abstractmethod
    def forward(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """User state at every position [B, S, d]; the last column is the state after the whole sequence."""

    def final_states(self, item_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The state after each whole sequence [B, d]: `forward`'s last column (ranking needs only that; an
        encoder may compute it with less work)."""
        return self.forward(item_embeddings, mask)[:, -1]


@register_kind
class ItemTower(Component):
    """Catalogue indices -> item embeddings, for ID-based baselines."""

    kind: ClassVar[str] = SLOT["item_tower"].type_prefix

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        return "id"

    @abstractmethod
    def bind_catalogue(self, item_ids: Sequence[str]) -> None:
        """Read a dataset's catalogue indices (1..N, in `item_ids` order) through the tower's own rows from now on.

        Refuses (ConfigError) a catalogue with ids the tower has no row for, naming some of them.
        """

    @abstractmethod
    def train_only(self, catalogue_indices: torch.Tensor) -> None:
        """Only these catalogue items (those known at training time) get a trained row; the others are marked
        untrained and score below every trained item (issue 24)."""

    @abstractmethod
    def untrained_indices(self, num_items: int) -> torch.Tensor:
        """Catalogue indices 1..num_items whose row was never trained (empty when every row was)."""

    @abstractmethod
    def forward(self, item_indices: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, d] of catalogue rows (0 = padding)."""


def kind_classes() -> dict[str, type[Component]]:
    """Each `create_component` kind (pmmrec.slots: `text`, ..., `id`) -> the kind class that declares its contract,
    matched through the slot's type prefix (kinds register with `register_kind`, a new modality's in its own file)."""
    missing = [slot.type_prefix for slot in SLOT_TABLE if slot.type_prefix not in _KIND_CLASSES]
    if missing:
        raise RuntimeError(f"no kind class registered for {', '.join(missing)} (pmmrec.slots names them)")
    return {slot.kind: _KIND_CLASSES[slot.type_prefix] for slot in SLOT_TABLE}


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid tokens [N, T, d] -> [N, d]; an all-padding row gives zeros, not NaN."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
