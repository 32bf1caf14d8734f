"""Colour histogram: 8x8x8 RGB bins, scaled by 1e7 / pixel count as in the seed, L1 distance."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind

BINS = 8


class ColorHistogram(Extractor):
    """512 float32 bin counts per image (R-major, then G, then B), summing to 1e7.

    The histogram is of the image decoded at ``decode_size`` (JPEG draft / box reduction):
    a proportion of pixels per bin barely moves with scale (tests bound the L1 difference).
    """

    name: ClassVar[str] = "color"
    kind: ClassVar[Kind] = "vector"
    dim = BINS**3
    dtype: ClassVar[type] = np.float32
    metric: ClassVar[str] = "l1"
    light: ClassVar[bool] = True
    decode_mode = "RGB"

    def __init__(self, decode_size: int | None = 256, max_pixels: int = 100_000_000) -> None:
        super().__init__(max_pixels=max_pixels)
        self.decode_size = decode_size

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Histogram of each image: 512 float32."""
        out = []
        shift = 8 - int(np.log2(BINS))
        for img in images:
            px = np.asarray(img, dtype=np.uint8).reshape(-1, 3) >> shift
            idx = (px[:, 0].astype(np.int32) * BINS + px[:, 1]) * BINS + px[:, 2]
            hist = np.bincount(idx, minlength=BINS**3).astype(np.float64)
            out.append((hist * (1e7 / len(idx))).astype(np.float32))
        return out
