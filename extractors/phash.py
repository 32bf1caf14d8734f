"""576-bit DCT perceptual hash, bit for bit the seed's (``imagehash.phash(img, hash_size=24)``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from PIL import Image

from extractors.base import Extractor, Kind

HASH_SIZE = 24
IMG_SIZE = HASH_SIZE * 4  # imagehash's highfreq_factor of 4
#: The sign of each horizontal DCT frequency in the mirrored image.
_MIRROR = np.where(np.arange(HASH_SIZE) % 2 == 1, -1.0, 1.0)


class PHash(Extractor):
    """Greyscale, LANCZOS to 96x96, 2-D DCT-II, top-left 24x24, bit = value > median.

    Bits are packed MSB-first, row-major, into 72 bytes. ``draft=True`` (the default) decodes
    JPEGs at a reduced scale first, which is several times faster and changes a few bits.
    ``mirror=True`` (the default) stores the mirrored image's hash behind the hash (144
    bytes): the duplicate finder then groups mirrored copies, whose hash cannot be derived
    from the stored one (the median of the flipped coefficients differs).
    """

    name: ClassVar[str] = "phash"
    kind: ClassVar[Kind] = "binary"
    dim = HASH_SIZE * HASH_SIZE
    dtype: ClassVar[type] = np.uint8
    metric: ClassVar[str] = "hamming"
    light: ClassVar[bool] = True
    decode_mode = "L"

    @property
    def nbytes(self) -> int:
        """Bytes of one stored feature: the hash's bits, packed, and the mirrored hash's."""
        return self.dim // 8 * (2 if self.mirror else 1)

    def __init__(
        self, draft: bool = True, mirror: bool = True, max_pixels: int = 100_000_000
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        self.mirror = mirror
        # Draft to three times the hash input: close to the exact hash for little more time
        # than 2x (measured: docs/architecture.md).
        self.decode_size = IMG_SIZE * 3 if draft else None

    @staticmethod
    def _lowfreq(img: Image.Image) -> np.ndarray:
        import scipy.fftpack  # here: processes that only read the kind never load SciPy

        pixels = np.asarray(img.resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS))
        # Same calls as imagehash so that full-resolution hashes agree to the bit.
        dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
        return dct[:HASH_SIZE, :HASH_SIZE]

    @staticmethod
    def _bits(lowfreq: np.ndarray) -> np.ndarray:
        return np.packbits((lowfreq > np.median(lowfreq)).ravel())

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Hash each image: 72 uint8 per image, then the mirrored hash's 72 with ``mirror``."""
        if self.mirror:
            return [both.ravel() for both in self.query_variants(images)]
        return [self._bits(self._lowfreq(img)) for img in images]

    def query_variants(self, images: list[Image.Image]) -> list[np.ndarray]:
        """The hash and the hash of the mirrored image, as the seed searched both.

        Mirroring flips the sign of every odd horizontal DCT frequency, so the mirrored hash
        comes from the same transform instead of a second resize and DCT.
        """
        out = []
        for img in images:
            low = self._lowfreq(img)
            out.append(np.stack([self._bits(low), self._bits(low * _MIRROR[None, :])]))
        return out
