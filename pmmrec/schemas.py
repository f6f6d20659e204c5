"""Pydantic schemas of the JSON files pmmrec writes and reads back: pmmrec.json, checksums.json, progress.json.

Files read from disk are validated in strict mode (`pmmrec.jsonfile.validate_strictly`): `"sha256": 5` or
`"epoch": "3"` is one error naming the file and the key, never a TypeError deeper down.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pmmrec.slots import MODALITIES, SLOTS

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


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


class ProgressFile(_Closed):
    """progress.json of a training checkpoint: where the run stands."""

    epoch: int = Field(ge=0)
    step_in_epoch: int = Field(ge=0)
    global_step: int = Field(ge=0)
    best: float | None
    best_epoch: int | None = Field(ge=1)
    stale_epochs: int = Field(ge=0)
    history: list[dict[str, Any]]
