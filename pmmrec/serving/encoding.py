"""The one way the server turns an added item's content into its embedding: the model's own `encode_items`."""

from __future__ import annotations

import torch
from PIL import Image

from pmmrec.model import PMMRec
from pmmrec.serving.limits import ServiceError


@torch.inference_mode()
def encode_item(model: PMMRec, text: str, picture: Image.Image | None, device: torch.device) -> torch.Tensor:
    """One item's embedding [d] on `device` from its content, with the model's own encoders.

    `PMMRec.encode_items` prepares the inputs the one way the library does (the text encoder's tokenizer; the
    image resized and centre-cropped to the vision encoder's side, as the dataset builder stores images).
    """
    if model.vision is not None and picture is None:
        raise ServiceError(422, "this model reads images: the item needs an image")
    texts = [text] if model.text is not None else None
    images = [picture] if model.vision is not None else None
    vector = model.encode_items(texts=texts, images=images)[0].to(device)
    if not bool(torch.isfinite(vector).all()):
        raise ServiceError(422, "the model produced a non-finite embedding for this item")
    return vector
