"""Image preprocessing shared by vision encoders: normalisation with the backbone's own statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig
from pmmrec.errors import ArtefactError
from pmmrec.jsonfile import read_json_file

PREPROCESSING_FILE = "preprocessing.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionPreprocessingFields(ComponentConfig):
    """How raw images become model input; stored in config.json and mirrored in preprocessing.json."""

    image_size: int = Field(default=224, ge=8, le=_backbones.MAX_IMAGE_SIZE, description="Square input side in pixels.")
    image_mean: tuple[float, float, float] = Field(default=CLIP_MEAN, description="Per-channel mean (0-1 scale).")
    image_std: tuple[float, float, float] = Field(default=CLIP_STD, description="Per-channel std (0-1 scale).")

    @model_validator(mode="after")
    def _positive_std(self) -> VisionPreprocessingFields:
        if min(self.image_std) <= 0:
            raise ValueError("image_std must be positive")
        return self


def normalise_pixels(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [N, 3, H, W] (or float 0-255) -> normalised float tensor."""
    mean_t = torch.tensor(mean, device=pixels.device, dtype=dtype).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=pixels.device, dtype=dtype).view(1, -1, 1, 1) * 255.0
    return (pixels.to(dtype) - mean_t) / std_t


def preprocessing_document(config: VisionPreprocessingFields) -> dict[str, Any]:
    """preprocessing.json: resize shorter side, centre crop, scale to 0-1, normalise (open_clip style)."""
    return {
        "image_size": config.image_size,
        "resize": "shorter side to image_size (bicubic), then centre crop image_size x image_size",
        "rescale": "divide by 255",
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "channel_order": "RGB",
    }


def write_preprocessing(folder: Path, config: VisionPreprocessingFields) -> None:
    """Write preprocessing.json (for people and other tools: pmmrec reads the same facts from config.json)."""
    payload = preprocessing_document(config)
    (folder / PREPROCESSING_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def check_preprocessing(folder: Path, config: VisionPreprocessingFields) -> None:
    """A folder's preprocessing.json says what its config.json says (a file that lies to other tools is refused)."""
    path = folder / PREPROCESSING_FILE
    if not os.path.lexists(path):
        return
    document = read_json_file(path, error=ArtefactError, max_bytes=1 << 16, max_depth=4)
    expected = preprocessing_document(config)
    if not isinstance(document, dict):
        raise ArtefactError(f"{path}: expected a JSON object at the top level")
    for key in sorted(set(document) | set(expected)):
        if document.get(key) != expected.get(key):
            raise ArtefactError(
                f"{path}: {key} is {document.get(key)!r} but config.json says {expected.get(key)!r}"
            )
