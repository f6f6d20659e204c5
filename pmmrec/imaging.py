"""Image geometry shared by dataset builders, encoders' preprocessing and the server: one resize rule, one budget.

Every path that decodes or resizes an image (the LMDB builder, the reference import, training's image store, the
encoders' preprocessing, the server) checks the image's shape against one `ImageBudget` before touching its pixels:
a 196-byte PNG of 40,000 x 1 pixels would otherwise be decoded and resized to 8,960,000 x 224 (8.6 GB) before the
centre crop kept 224 x 224 of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pmmrec.errors import DatasetError


@dataclass(frozen=True)
class ImageBudget:
    """How large an image pmmrec decodes, and how far from square (the centre crop would keep almost nothing)."""

    max_pixels: int = 100_000_000  # width x height of the decoded image (a 100-megapixel photo)
    max_aspect_ratio: float = 20.0  # longest side over shortest side
    max_resized_pixels: int | None = None  # after the short side is resized; None: side^2 x max_aspect_ratio


DEFAULT_BUDGET = ImageBudget()


class ImageBudgetError(DatasetError):
    """An image outside the budget; `kind` says which limit: pixels, aspect, resized or empty."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def resized_pixels(width: int, height: int, side: int) -> int:
    """Pixels of the image once its short side is resized to `side` (what `resize_and_center_crop` allocates)."""
    short, long = min(width, height), max(width, height)
    return side * max(side, round(long * side / short))


def check_image_shape(
    width: int, height: int, sides: tuple[int, ...] = (), budget: ImageBudget = DEFAULT_BUDGET, where: str = "image"
) -> None:
    """Refuse (ImageBudgetError naming `where`) an image whose decoding or resizing to `sides` is absurdly costly."""
    if width < 1 or height < 1:
        raise ImageBudgetError(f"{where}: image has no pixels", "empty")
    if width * height > budget.max_pixels:
        raise ImageBudgetError(
            f"{where}: image is {width}x{height} pixels; at most {budget.max_pixels:,} pixels", "pixels"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > budget.max_aspect_ratio:
        raise ImageBudgetError(
            f"{where}: image is {width}x{height} pixels: its aspect ratio {ratio:,.0f}:1 is over the limit of "
            f"{budget.max_aspect_ratio:g}:1 (the centre crop would keep almost nothing of it)",
            "aspect",
        )
    for side in sides:
        limit = budget.max_resized_pixels
        limit = limit if limit is not None else int(side * side * budget.max_aspect_ratio) + 2 * side
        pixels = resized_pixels(width, height, side)
        if pixels > limit:
            raise ImageBudgetError(
                f"{where}: image is {width}x{height} pixels: resizing its short side to {side} would make {pixels:,} "
                f"pixels, over the limit of {limit:,}",
                "resized",
            )


def resize_and_center_crop(
    image: Image.Image, size: int, budget: ImageBudget = DEFAULT_BUDGET, where: str = "image"
) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and centre-crop size x size, as CLIP's preprocessing does.

    The image's shape is checked against `budget` first, so no resize can allocate more than the budget allows.
    """
    if size < 1:
        raise DatasetError(f"image size must be positive, got {size}")
    width, height = image.size
    check_image_shape(width, height, (size,), budget, where)
    image = image.convert("RGB")
    if width <= height:
        new_width, new_height = size, max(size, round(height * size / width))
    else:
        new_width, new_height = max(size, round(width * size / height)), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = round((new_width - size) / 2.0)
    top = round((new_height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
