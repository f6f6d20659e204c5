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


def resized_pixels(width: int, height: int, side: int) -> int:
    """Pixels of the image once its short side is resized to `side` (what `resize_and_center_crop` allocates)."""
    short, long = min(width, height), max(width, height)
    return side * max(side, round(long * side / short))


def check_budget(width: int, height: int, sides: list[int], limits: Limits) -> None:
    """Refuse an image whose shape makes decoding or resizing it absurdly expensive (before any decoding)."""
    if width < 1 or height < 1:
        raise ServiceError(422, "image has no pixels")
    if width * height > limits.max_image_pixels:
        raise ServiceError(413, f"image is {width}x{height} pixels; at most {limits.max_image_pixels:,} pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ServiceError(
            422,
            f"image is {width}x{height} pixels: its aspect ratio {ratio:,.0f}:1 is over the limit of "
            f"{limits.max_aspect_ratio}:1 (the centre crop would keep almost nothing of it)",
        )
    for side in sides:
        pixels = resized_pixels(width, height, side)
        if pixels > limits.max_resized_pixels:
            raise ServiceError(
                413,
                f"image is {width}x{height} pixels: resizing its short side to {side} would make {pixels:,} pixels, "
                f"over the limit of {limits.max_resized_pixels:,}",
            )


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
