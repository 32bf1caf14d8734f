"""Small image builders shared by the tests."""

import io

from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode an image to bytes in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a side x side PNG of one colour, a few tens of KB on disk."""
    return encode(Image.new("1", (side, side)), "PNG")


def reencode(data: bytes, scale: float = 1.0, quality: int = 75, mirror: bool = False) -> bytes:
    """A resized / recompressed / mirrored copy of a JPEG."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize(
            (int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS
        )
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return encode(img, "JPEG", quality=quality)
