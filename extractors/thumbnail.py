"""Thumbnails for the page: a small WebP of each image, EXIF-oriented (the original image is
never stored)."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind


class Thumbnail(Extractor):
    """The image scaled to ``size`` pixels on its longest side (never enlarged), as WebP.

    Its feature is the file's bytes (variable length), stored by the blob index kind and
    served by ``GET /images/{id}/thumbnail``. At ``quality`` 80 a 320-px photo thumbnail is
    2-23 KB, 10 KB at the median (the shared photos).
    """

    name: ClassVar[str] = "thumbnail"
    kind: ClassVar[Kind] = "blob"
    dtype: ClassVar[type] = np.uint8
    metric: ClassVar[str] = "none"
    light: ClassVar[bool] = True
    #: Variable-length: the WebP file's bytes.
    dim = 0
    decode_mode = "RGB"

    def __init__(self, size: int = 320, quality: int = 80, max_pixels: int = 100_000_000):
        super().__init__(max_pixels=max_pixels)
        if not 16 <= size <= 2048 or not 1 <= quality <= 100:
            raise ValueError(f"thumbnail size 16-2048 and quality 1-100, got {size}, {quality}")
        self.size = size
        self.quality = quality
        # JPEG draft decoding down to the thumbnail's size: both sides stay at least
        # ``size``, so the last step is a real downscale (LANCZOS), never an enlargement.
        self.decode_size = size

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """The WebP bytes of each image's thumbnail, as a uint8 array."""
        out = []
        for img in images:
            small = img.copy()
            small.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            small.save(buf, "WEBP", quality=self.quality, method=4)
            out.append(np.frombuffer(buf.getvalue(), np.uint8))
        return out
