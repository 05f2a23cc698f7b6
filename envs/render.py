"""Drawing helpers shared by the games: one bundled font, so images look the same on every machine.

Pillow (>= 10.1) ships a scalable font inside the wheel (`ImageFont.load_default(size=...)`), so no system font
is ever needed. Fonts are cached per size because loading one costs more than drawing a whole frame.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(size)))


def canvas(size: int, color=(255, 255, 255)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), color)
    return image, ImageDraw.Draw(image)


def fit_font(draw: ImageDraw.ImageDraw, text: str, max_width: float, max_height: float) -> ImageFont.FreeTypeFont:
    """The largest font in which `text` fits the box (binary search over sizes)."""
    lo, hi = 6, max(7, int(max_height))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font(mid))
        if right - left <= max_width and bottom - top <= max_height:
            lo = mid
        else:
            hi = mid - 1
    return font(lo)


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8).copy()
