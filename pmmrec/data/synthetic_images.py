"""Deterministic SYNTHETIC item pictures: a genre-coloured canvas, a few shapes and the title.

No recommendation data set that can be installed here ships real item images, so MovieLens items get these
stand-ins to exercise the image path end to end. They carry a little signal (genre colour, title text) and are
labelled synthetic wherever they are stored or reported: results on them say nothing about real images.
"""

from __future__ import annotations

import hashlib
import random
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GENRE_COLOURS: dict[str, tuple[int, int, int]] = {
    "Action": (200, 40, 40),
    "Adventure": (230, 120, 30),
    "Animation": (250, 200, 60),
    "Children's": (120, 210, 90),
    "Comedy": (250, 230, 110),
    "Crime": (80, 80, 90),
    "Documentary": (150, 150, 120),
    "Drama": (70, 90, 170),
    "Fantasy": (160, 90, 200),
    "Film-Noir": (30, 30, 30),
    "Horror": (110, 10, 20),
    "Musical": (230, 110, 180),
    "Mystery": (60, 40, 110),
    "Romance": (240, 140, 150),
    "Sci-Fi": (40, 170, 190),
    "Thriller": (130, 60, 40),
    "War": (100, 110, 60),
    "Western": (190, 150, 90),
}
FALLBACK_COLOUR = (128, 128, 128)


def _seeded_random(item_id: str) -> random.Random:
    """A random generator seeded by the item id only, so each picture is reproducible."""
    seed = int.from_bytes(hashlib.sha256(f"pmmrec-synthetic-image:{item_id}".encode()).digest()[:8], "big")
    return random.Random(seed)


def _genre_colour(genre: str, rng: random.Random) -> tuple[int, int, int]:
    base = GENRE_COLOURS.get(genre)
    if base is None:  # unknown genre: a colour fixed by its name
        digest = hashlib.sha256(genre.encode("utf-8")).digest()
        base = (digest[0], digest[1], digest[2]) if genre else FALLBACK_COLOUR
    jitter = [rng.randint(-12, 12) for _ in range(3)]
    return (
        min(255, max(0, base[0] + jitter[0])),
        min(255, max(0, base[1] + jitter[1])),
        min(255, max(0, base[2] + jitter[2])),
    )


def render_synthetic_image(item_id: str, title: str, genres: Sequence[str], size: int = 224) -> np.ndarray:
    """Draw the item's synthetic picture as a size x size x 3 uint8 array (deterministic in its arguments)."""
    rng = _seeded_random(item_id)
    colours = [_genre_colour(genre, rng) for genre in genres] or [FALLBACK_COLOUR]
    canvas = Image.new("RGB", (size, size), colours[0])
    draw = ImageDraw.Draw(canvas)
    band = size // max(1, len(colours))
    for position, colour in enumerate(colours[1:], start=1):
        draw.rectangle((0, position * band, size, (position + 1) * band), fill=colour)
    for _ in range(rng.randint(3, 6)):
        left, top = rng.randint(0, size - 1), rng.randint(0, size - 1)
        extent = rng.randint(size // 10, size // 3)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        box = (left, top, left + extent, top + extent)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill, outline=(255, 255, 255))
        else:
            draw.rectangle(box, fill=fill, outline=(0, 0, 0))
    font_size = max(8, size // 14)
    font = ImageFont.load_default(size=font_size)
    lines = textwrap.wrap(title, width=max(8, int(size / (font_size * 0.55))))[:4] or [item_id]
    text_top = size - (len(lines) + 1) * (font_size + 2)
    draw.rectangle((0, text_top - 4, size, size), fill=(255, 255, 255))
    for line_number, line in enumerate(lines):
        draw.text((6, text_top + line_number * (font_size + 2)), line, fill=(0, 0, 0), font=font)
    return np.array(canvas, dtype=np.uint8)
