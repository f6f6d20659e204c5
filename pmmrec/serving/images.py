"""Uploaded images: decoded only within a budget, so no upload can take gigabytes or crash a resize.

An image is refused before its pixels are decoded when its file is too large (413), it has too many pixels
(413), it is a strip thinner than `max_aspect_ratio` allows (422), or resizing its short side to a side the server
needs would produce more than `max_resized_pixels` (413). Each message says which limit and why.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pmmrec.data import resize_and_center_crop
from pmmrec.imaging import ImageBudget, ImageBudgetError, check_image_shape
from pmmrec.serving.limits import Limits, ServiceError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def decode_base64(value: str, limits: Limits) -> bytes:
    """The bytes of a base64 string or `data:` URL; 413 past the image limit, 422 when not base64."""
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    if len(value) > (limits.max_image_bytes + 2) // 3 * 4 + 8:
        raise ServiceError(
            413,
            f"image_base64 has {len(value):,} characters: the image is over the limit of {limits.max_image_bytes:,} bytes",
        )
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(422, f"image_base64: not valid base64 ({exc})") from None


_STATUS = {"empty": 422, "pixels": 413, "aspect": 422, "resized": 413}


def check_budget(width: int, height: int, sides: list[int], limits: Limits) -> None:
    """Refuse an image whose shape makes decoding or resizing it absurdly expensive (before any decoding): the
    image budget every path shares (`pmmrec.imaging`), with the server's limits."""
    budget = ImageBudget(limits.max_image_pixels, limits.max_aspect_ratio, limits.max_resized_pixels)
    try:
        check_image_shape(width, height, tuple(sides), budget, where="image")
    except ImageBudgetError as exc:
        raise ServiceError(_STATUS[exc.kind], str(exc).removeprefix("image: ")) from None


def decode_image(data: bytes, limits: Limits, sides: list[int]) -> Image.Image:
    """An RGB picture from an uploaded file, refused (413/422) unless it and its resizes to `sides` fit the budget."""
    if len(data) > limits.max_image_bytes:
        raise ServiceError(413, f"image has {len(data):,} bytes: over the limit of {limits.max_image_bytes:,} bytes")
    if not data:
        raise ServiceError(422, "image_base64 is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            width, height = picture.size
            check_budget(width, height, sides, limits)
            if picture.format not in ACCEPTED_FORMATS:
                raise ServiceError(422, f"image format {picture.format} is not accepted (PNG, JPEG, WebP)")
            picture.load()
            return ImageOps.exif_transpose(picture).convert("RGB")
    except ServiceError:
        raise
    except UnidentifiedImageError:
        raise ServiceError(422, "image_base64: not a recognised image file (PNG, JPEG or WebP)") from None
    except Exception as exc:  # any decoder failure means the upload is unusable
        raise ServiceError(422, f"image_base64: undecodable image ({type(exc).__name__}: {exc})") from None


def square_pixels(picture: Image.Image, side: int) -> np.ndarray:
    """HxWx3 uint8 pixels of the picture resized and centre-cropped to `side`, as the dataset builder does."""
    return np.array(resize_and_center_crop(picture, side), dtype=np.uint8)


def to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of HxWx3 uint8 pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
