"""Pydantic schemas of the JSON files pmmrec writes and reads back: pmmrec.json, checksums.json, progress.json,
data_split.json.

Files read from disk are validated in strict mode (`pmmrec.jsonfile.validate_strictly`): `"sha256": 5` or
`"epoch": "3"` is one error naming the file and the key, never a TypeError deeper down.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from pmmrec.slots import MODALITIES, SLOTS

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MODEL_FILES = ("data_split.json",)  # files of a model folder's top level that pmmrec reads, pinned by pmmrec.json


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_relative_names(files: dict[str, str]) -> dict[str, str]:
    """File names in a checksum list are relative POSIX paths inside the folder (no '..', no absolute path)."""
    for name in files:
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{name!r} is not a relative path inside the folder")
    return files


class ChecksumsFile(_Closed):
    """checksums.json of a component folder: the sha256 of every file pmmrec reads when loading it."""

    format: Literal["pmmrec-checksums"]
    format_version: Literal[1]
    algorithm: Literal["sha256"]
    files: dict[str, Sha256] = Field(min_length=1)

    _names = field_validator("files")(check_relative_names)


class ManifestEntry(_Closed):
    """One component of an assembled model, as pmmrec.json pins it."""

    type: str = Field(min_length=1)
    path: str = Field(min_length=1)
    requested: str | None = None
    resolved_commit: str | None = None
    created: bool = False
    sha256: Sha256
    files: dict[str, Sha256] | None = Field(
        default=None, description="sha256 of every file of the component folder but README.md (absent in older manifests)."
    )

    _names = field_validator("files")(lambda files: None if files is None else check_relative_names(files))


class ManifestFile(_Closed):
    """pmmrec.json: the lockfile of an assembled model."""

    pmmrec_type: Literal["model/pmmrec"]
    format_version: int = Field(ge=1)
    pmmrec_version: str
    dim: int = Field(ge=1)
    modalities: list[Literal[MODALITIES]] = Field(min_length=1)
    components: dict[Literal[SLOTS], ManifestEntry] = Field(min_length=1)
    files: dict[Literal[MODEL_FILES], Sha256] | None = Field(  # type: ignore[valid-type]
        default=None, description="sha256 of the files of the model folder's top level that pmmrec reads (data_split.json)."
    )


class DatasetCounts(_Closed):
    """dataset.json's counts."""

    users: int = Field(ge=0)
    items: int = Field(ge=0)
    interactions: int = Field(ge=0)
    images: int = Field(default=0, ge=0)


class DatasetFileEntry(_Closed):
    """dataset.json's record of one file: its sha256 and size."""

    sha256: Sha256
    bytes: int | None = Field(default=None, ge=0)


class DatasetInfoFile(_Closed):
    """dataset.json of a dataset folder."""

    format: Literal["pmmrec-dataset"]
    format_version: Literal[1]
    name: str = Field(min_length=1, max_length=1000)
    counts: DatasetCounts
    images: Literal["none", "synthetic", "real"]
    image_note: str | None = Field(default=None, max_length=10_000)
    image_size: int | None = Field(default=None, ge=1, le=65_535)
    items_without_images: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, DatasetFileEntry] = Field(min_length=1)

    _names = field_validator("files")(check_relative_names)

    @model_validator(mode="after")
    def _images_agree(self) -> DatasetInfoFile:
        without = self.items_without_images
        if len(set(without)) != len(without):
            raise ValueError("items_without_images lists an item twice")
        if self.counts.images > self.counts.items:
            raise ValueError(f"counts.images ({self.counts.images}) is more than counts.items ({self.counts.items})")
        if self.images == "none":
            if self.image_size is not None or without or self.counts.images:
                raise ValueError("images is 'none' but image_size, items_without_images or counts.images say otherwise")
        elif self.image_size is None:
            raise ValueError(f"images is {self.images!r} but image_size is null")
        elif self.counts.images != self.counts.items - len(without):
            raise ValueError(
                f"counts.images ({self.counts.images}) is not counts.items ({self.counts.items}) less the "
                f"{len(without)} items_without_images"
            )
        return self


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class DatasetFingerprintEntry(_Closed):
    """Which dataset a model was trained on: its name and the sha256 of its items.tsv and users.tsv."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    items_sha256: Sha256
    users_sha256: Sha256


class SplitRecordFile(_Closed):
    """data_split.json of a trained model: how its run split and windowed the data (`pmmrec evaluate` reads it),
    and which dataset it was trained on (absent in models trained before it was recorded)."""

    min_length: int | None = Field(default=None, ge=3, le=1_000_000)
    max_history: int | None = Field(default=None, ge=3, le=1_000_000_000)
    max_length: int | None = Field(default=None, ge=1, le=4096)
    window: Literal["tiles", "crop", "last"] | None = None
    dataset: DatasetFingerprintEntry | None = None
    valid_targets_trained: bool = False  # a refit's model: its validation figures are not held out

    @model_validator(mode="after")
    def _history_holds_a_split(self) -> SplitRecordFile:
        if self.max_history is not None and self.max_history < (self.min_length or 3):
            raise ValueError(f"max_history ({self.max_history}) must be at least min_length ({self.min_length or 3})")
        return self


class FrozenFile(_Closed):
    """frozen.json of a training checkpoint: the frozen parameters it leaves out, and one sha256 of their values."""

    names: list[str] = Field(min_length=1)
    sha256: Sha256


class ProgressFile(_Closed):
    """progress.json of a training checkpoint: where the run stands."""

    epoch: int = Field(ge=0)
    step_in_epoch: int = Field(ge=0)
    global_step: int = Field(ge=0)
    best: float | None
    best_epoch: int | None = Field(ge=1)
    stale_epochs: int = Field(ge=0)
    history: list[dict[str, Any]]
