"""The component contract: typed config, strict safetensors weights, model card, hub push.

Every PMMRec component (text encoder, vision encoder, fusion, user encoder, ID item tower) is a
`Component`: a torch module whose architecture is fully described by a pydantic config, saved as
`config.json` + `model.safetensors` + `README.md` under a stable type name (never a Python import
path), and loaded strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pmmrec import __version__, integrity
from pmmrec.errors import ArtefactError
from pmmrec.fileio import atomic_directory
from pmmrec.integrity import tensors_digest
from pmmrec.jsonfile import read_json_file, validate_strictly
from pmmrec.recovery import recover

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

C = TypeVar("C", bound="Component")

_REGISTRY: dict[str, type[Component]] = {}


class ComponentConfig(BaseModel):
    """Base of every component config: validates on construction, refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def register_component(cls: type[C]) -> type[C]:
    """Class decorator: make `cls` loadable under its stable `type_name`."""
    name = cls.type_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"component type {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def component_class(type_name: str, *, source: str = "config.json") -> type[Component]:
    """The class registered under `type_name`; a clear error for unknown names."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ArtefactError(f"{source}: unknown component type {type_name!r} (this pmmrec knows: {known})") from None


def registered_types() -> dict[str, type[Component]]:
    """A copy of the registry (type name -> class)."""
    return dict(_REGISTRY)


class Component(nn.Module):
    """A separately versioned PMMRec part with one save/load/push contract."""

    type_name: ClassVar[str]
    kind: ClassVar[str]  # text_encoder | vision_encoder | fusion | user_encoder | item_tower
    config_class: ClassVar[type[ComponentConfig]]

    def __init__(self, config: ComponentConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ---- hooks for subclasses ---------------------------------------------------------------

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

    def card_metadata(self) -> dict[str, Any]:
        """Extra YAML metadata for the model card (for example `base_model`)."""
        return {}

    def card_summary(self) -> str:
        """A one-paragraph description of this component for its model card."""
        return f"A `{self.type_name}` component of pmmrec."

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
        card: dict[str, Any] | None = None,
    ) -> Path:
        """Write config.json, model.safetensors, README.md and input files; atomic, never a silent overwrite.

        `card` adds training facts (datasets, metrics, objectives) to the model card.
        """
        from pmmrec.hub import render_model_card

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
            self.save_extra_files(staging)
            (staging / CARD_FILE).write_text(render_model_card(self, card or {}), encoding="utf-8")
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
        card: dict[str, Any] | None = None,
    ) -> str:
        """Save to a temporary folder and publish it; returns the commit id."""
        import tempfile

        from pmmrec.hub import push_folder

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
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)


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
