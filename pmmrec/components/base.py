"""The component contract: typed config, strict safetensors weights, model card, hub push.

Every PMMRec component (text encoder, vision encoder, fusion, user encoder, ID item tower) is a
`Component`: a torch module whose architecture is fully described by a pydantic config, saved as
`config.json` + `model.safetensors` + `README.md` under a stable type name (never a Python import
path), and loaded strictly.
"""

from __future__ import annotations

import json
import os
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pmmrec import budget, integrity
from pmmrec._version import __version__
from pmmrec.cards import ComponentCardData, TrainingFacts, render_component_card
from pmmrec.components._registry import component_class, register_component, registered_types
from pmmrec.components.options import CreateOptions
from pmmrec.errors import ArtefactError
from pmmrec.fileio import atomic_directory, follow_umask
from pmmrec.hub import push_folder
from pmmrec.integrity import tensors_digest
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "Component",
    "ComponentConfig",
    "component_class",
    "register_component",
    "registered_types",
    "tensors_digest",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

C = TypeVar("C", bound="Component")

# The batch a component's activations are estimated for (items or sequences at a time; the budget's unit).
NOMINAL_BATCH = 16


class ComponentConfig(BaseModel):
    """Base of every component config: validates on construction, refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def parameter_estimate(self) -> int:
        """About how many parameters (and buffers) the component built from this config holds."""
        return 0

    def activation_estimate(self) -> int:
        """About how many floats one forward pass over NOMINAL_BATCH inputs keeps alive at its peak."""
        return 0

    def memory_estimate(self) -> int:
        """Bytes the component needs: float32 parameters plus the activations of a nominal batch (an estimate)."""
        return 4 * (self.parameter_estimate() + self.activation_estimate())

    def summary(self) -> str:
        """The config's fields on one line (a backbone's own config summarised by its sizes)."""
        fields = self.model_dump(mode="json")
        backbone = fields.pop("backbone_config", None)
        parts = [f"{key}={value}" for key, value in fields.items()]
        if isinstance(backbone, dict):
            sizes = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "image_size")
            parts += [f"backbone {key}={backbone[key]}" for key in sizes if key in backbone]
        return ", ".join(parts)


class Component(nn.Module, metaclass=ABCMeta):
    """A separately versioned PMMRec part with one save/load/push contract.

    Subclasses declare `type_name` (registered), `config_class`, and `create` (a fresh component from the shared
    creation options); their kind (`components.kinds`) declares what callers use of them.
    """

    type_name: ClassVar[str]
    kind: ClassVar[str]  # text_encoder | vision_encoder | fusion | user_encoder | item_tower
    config_class: ClassVar[type[ComponentConfig]]

    def __init__(self, config: ComponentConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        budget.require(config.memory_estimate(), f"a {self.type_name} component ({config.summary()})")
        self.config = config

    # ---- hooks for subclasses ---------------------------------------------------------------

    @classmethod
    def type_for(cls, options: CreateOptions, variant: str | None = None) -> str:
        """The registered type a fresh component of this kind gets: `<kind>/<variant>`."""
        return f"{cls.kind}/{variant or cls.default_variant(options)}"

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        """The type (after `<kind>/`) created when none is named; each kind chooses its own."""
        raise ValueError(f"name the {cls.kind} type to create")

    @classmethod
    @abstractmethod
    def create(cls: type[C], options: CreateOptions) -> C:
        """A fresh component of this type (pretrained backbone weights where the type has a backbone)."""

    @property
    def dim(self) -> int:
        """Output width d of the component."""
        return int(self.config.dim)  # type: ignore[attr-defined]

    def save_extra_files(self, folder: Path) -> None:
        """Write what is needed to prepare inputs (tokenizer, preprocessing). Default: nothing."""

    @classmethod
    def build_for_loading(cls: type[C], config: ComponentConfig, folder: Path) -> C:
        """Build the architecture (no pretrained download) before weights are loaded into it."""
        return cls(config)

    def base_model(self) -> str | None:
        """The Hub id of the pretrained weights this component starts from, for the card's `base_model`."""
        return None

    def fresh_parameter_prefixes(self) -> tuple[str, ...]:
        """Prefixes of the names of parameters that start from scratch in a component with pretrained weights:
        training gives them the fresh parts' learning rate. Default: none."""
        return ()

    def card_summary(self) -> str:
        """A one-paragraph description of this component for its model card."""
        return f"A `{self.type_name}` component of pmmrec."

    def card_data(self, facts: TrainingFacts | None = None) -> ComponentCardData:
        """The typed content of this component's model card."""
        trainable, frozen = self.parameter_counts()
        return ComponentCardData(
            type_name=self.type_name,
            kind=self.kind,
            summary=self.card_summary(),
            config=self.config.model_dump(mode="json"),
            trainable=trainable,
            frozen=frozen,
            base_model=self.base_model(),
            facts=facts or TrainingFacts(),
        )

    # ---- saving ---------------------------------------------------------------------------

    def config_document(self) -> dict[str, Any]:
        """The content of config.json."""
        return {
            "pmmrec_type": self.type_name,
            "format_version": FORMAT_VERSION,
            "pmmrec_version": __version__,
            "config": self.config.model_dump(mode="json"),
        }

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        card: TrainingFacts | None = None,
    ) -> Path:
        """Write config.json, model.safetensors, README.md and input files; atomic, never a silent overwrite.

        `card` adds training facts (datasets, metrics, objectives) to the model card.
        """
        target = Path(directory)
        with atomic_directory(target, overwrite=overwrite) as staging:
            (staging / CONFIG_FILE).write_text(json.dumps(self.config_document(), indent=2) + "\n", encoding="utf-8")
            tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
            save_file(
                tensors,
                str(staging / WEIGHTS_FILE),
                metadata={
                    "pmmrec_type": self.type_name,
                    "format_version": str(FORMAT_VERSION),
                    "pmmrec_version": __version__,
                    "pmmrec_tensors_sha256": tensors_digest(tensors),
                },
            )
            _sort_header_metadata(staging / WEIGHTS_FILE)
            follow_umask(staging / WEIGHTS_FILE)  # safetensors creates its files 0600
            self.save_extra_files(staging)
            (staging / CARD_FILE).write_text(render_component_card(self.card_data(card)), encoding="utf-8")
            integrity.write_checksums(staging)
        return target

    def push_to_hub(
        self,
        repo_id: str,
        *,
        tag: str | None = None,
        token: str | None = None,
        private: bool = False,
        api: Any = None,
        card: TrainingFacts | None = None,
    ) -> str:
        """Save to a temporary folder and publish it; returns the commit id."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "artefact", card=card)
            return push_folder(folder, repo_id, tag=tag, token=token, private=private, api=api)

    # ---- loading --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[C], reference: str | os.PathLike[str], revision: str | None = None, *, unverified: bool = False
    ) -> C:
        """Load a component from a folder or a `hub:`/`hf://` reference, strictly.

        `unverified=True` loads a folder whose files cannot be verified (no checksums.json, or edited); see
        pmmrec.integrity.
        """
        from pmmrec.references import resolve_reference

        resolved = resolve_reference(str(reference), revision=revision)
        return cls.from_folder(resolved.path, unverified=unverified)

    @classmethod
    def from_folder(
        cls: type[C],
        folder: str | os.PathLike[str],
        *,
        unverified: bool = False,
        checksums: dict[str, str] | None = None,
        checksums_source: str | None = None,
    ) -> C:
        """Load from a local artefact folder; every mismatch is an ArtefactError naming the file.

        Every file is checked first against `checksums` (an assembled model's manifest) or the folder's own
        checksums.json, unless `unverified`.
        """
        folder = Path(folder)
        recover(folder)
        if folder.is_dir():
            integrity.verify_component_folder(
                folder, unverified=unverified, expected=checksums, source=checksums_source
            )
        type_name, config_payload = read_config_document(folder)
        target_cls = component_class(type_name, source=str(folder / CONFIG_FILE))
        if not issubclass(target_cls, cls):
            raise ArtefactError(
                f"{folder / CONFIG_FILE}: holds a {type_name!r} component, which is not a {cls.__name__}"
            )
        config = validate_strictly(
            target_cls.config_class, config_payload, f"{folder / CONFIG_FILE}: invalid config for {type_name!r}",
            error=ArtefactError,
        )
        budget.require(
            config.memory_estimate(), f"{folder / CONFIG_FILE}: {type_name} ({config.summary()})", error=ArtefactError
        )
        module = target_cls.build_for_loading(config, folder)
        load_weights_strictly(module, folder / WEIGHTS_FILE, expected_type=type_name)
        module.eval()
        return module  # type: ignore[return-value]

    # ---- introspection --------------------------------------------------------------------

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return trainable, frozen


def read_config_document(folder: Path) -> tuple[str, dict[str, Any]]:
    """Parse and check config.json's envelope; returns (type name, architecture fields)."""
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: not a folder (a component is a folder holding {CONFIG_FILE})")
    if not os.path.lexists(path):
        raise ArtefactError(f"{path}: missing; {folder} is not a pmmrec component folder")
    document = read_json_file(path, error=ArtefactError, max_bytes=16 << 20)
    if not isinstance(document, dict):
        raise ArtefactError(f"{path}: expected a JSON object at the top level")
    expected = {"pmmrec_type", "format_version", "pmmrec_version", "config"}
    missing = expected - document.keys()
    unknown = document.keys() - expected
    if missing:
        raise ArtefactError(f"{path}: missing keys {sorted(missing)}")
    if unknown:
        raise ArtefactError(f"{path}: unknown keys {sorted(unknown)}")
    version = document["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtefactError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: format_version {version} is newer than this pmmrec supports ({FORMAT_VERSION}); upgrade pmmrec"
        )
    if not isinstance(document["pmmrec_type"], str):
        raise ArtefactError(f"{path}: pmmrec_type must be a string")
    if not isinstance(document["config"], dict):
        raise ArtefactError(f"{path}: config must be a JSON object")
    return document["pmmrec_type"], document["config"]


def load_weights_strictly(module: nn.Module, path: Path, *, expected_type: str) -> None:
    """Copy every tensor of a safetensors file into `module`; any mismatch is an error naming the file."""
    if not path.is_file():
        raise ArtefactError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtefactError(f"{path}: not a readable safetensors file ({exc})") from None
    stored_type = metadata.get("pmmrec_type")
    if stored_type is not None and stored_type != expected_type:
        raise ArtefactError(f"{path}: weights are for {stored_type!r} but config.json says {expected_type!r}")
    stored_version = metadata.get("format_version")
    if stored_version is not None and (not stored_version.isdigit() or int(stored_version) > FORMAT_VERSION):
        raise ArtefactError(f"{path}: unsupported format_version {stored_version!r} in the header metadata")
    expected = module.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"missing keys {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_shorten(unexpected)}")
    shape_errors = [
        f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & tensors.keys())
        if tensors[key].shape != expected[key].shape
    ]
    if shape_errors:
        problems.append("wrong shapes " + _shorten(shape_errors))
    if problems:
        raise ArtefactError(f"{path}: does not match the {expected_type!r} architecture: " + "; ".join(problems))
    integrity.verify_weights_header(path, metadata, tensors)
    check_tensor_values(tensors, expected, f"{path}: {expected_type}")
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)


def check_tensor_values(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    """Every tensor has the kind of dtype its slot holds (a float where a float is expected, the exact integer or
    bool type elsewhere) and floats are finite: broken weights are refused here, not served as NaN scores."""
    for key in sorted(tensors):
        tensor, slot = tensors[key], expected[key]
        if slot.dtype.is_floating_point:
            if not tensor.dtype.is_floating_point:
                raise ArtefactError(f"{label}: tensor {key!r} is {tensor.dtype}, expected a floating-point tensor")
            if not bool(torch.isfinite(tensor.to(slot.dtype)).all()):
                raise ArtefactError(f"{label}: tensor {key!r} holds NaN or infinite values (in {slot.dtype})")
            if key.endswith("running_var") and bool((tensor < 0).any()):
                raise ArtefactError(f"{label}: tensor {key!r} holds negative variances")
        elif tensor.dtype != slot.dtype:
            raise ArtefactError(f"{label}: tensor {key!r} is {tensor.dtype}, expected {slot.dtype}")


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, so equal weights give equal bytes.

    safetensors serialises `__metadata__` from a hash map whose order changes from save to save; the
    weights' sha256 (pinned in pmmrec.json) and the folder's commit id must not. Only the order within the
    (same-length, space-padded) header changes; the rewrite is skipped if that would not hold.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict):
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(canonical) > size or json.loads(canonical) != json.loads(raw):
            return
        handle.seek(8)
        handle.write(canonical.ljust(size, b" "))


def _shorten(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"
