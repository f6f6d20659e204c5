"""Image geometry shared by dataset builders, encoders' preprocessing and the server: one resize rule."""

from __future__ import annotations

from PIL import Image

from pmmrec.errors import DatasetError


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and centre-crop size x size, as CLIP's preprocessing does."""
    if size < 1:
        raise DatasetError(f"image size must be positive, got {size}")
    image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise DatasetError("image has no pixels")
    if width <= height:
        new_width, new_height = size, max(size, round(height * size / width))
    else:
        new_width, new_height = max(size, round(width * size / height)), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = round((new_width - size) / 2.0)
    top = round((new_height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
