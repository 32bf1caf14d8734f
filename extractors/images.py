"""Image decoding shared by every extractor: bytes in, a PIL image at the needed size out."""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats an upload may be in. MPO is what many cameras write: a JPEG with extra frames.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 100_000_000
ORIENTATION = 0x0112  # the EXIF tag

# Our own cap (checked from the header, before any pixel is decoded) is the guard; Pillow's
# warning at a lower size would only add noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class InvalidImage(ValueError):
    """The upload is not an image this service can read; the message says why, for a human.

    ``status`` is the HTTP status the API answers with: 400 unreadable, 413 too many pixels,
    415 a format that is not supported.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        # Keeps the status when the error travels between Ray processes.
        return (InvalidImage, (str(self), self.status))


def header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``data`` opened from its header alone (nothing decoded yet): ``InvalidImage`` for an
    empty upload, anything that is not an image of a supported format, or more than
    ``max_pixels`` pixels (a decompression bomb)."""
    if not data:
        raise InvalidImage("empty upload: no image data was sent")
    img: Image.Image
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(
            "not an image, or a format that is not supported "
            f"(supported: {', '.join(sorted(FORMATS))})",
            415,
        ) from None
    except Image.DecompressionBombError:
        # Pillow's own guard fires from the header too, above twice its default limit.
        raise InvalidImage(
            f"image has far more pixels than the limit of {max_pixels / 1e6:.0f} megapixels "
            "(a decompression bomb?)",
            413,
        ) from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InvalidImage(f"unreadable image header: {exc}") from None
    fmt = img.format
    if fmt not in FORMATS:
        raise InvalidImage(
            f"image format {fmt} is not supported (supported: {', '.join(sorted(FORMATS))})",
            415,
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has an empty size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.0f} megapixels",
            413,
        )
    return img


def decode(
    data: bytes,
    mode: str = "RGB",
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``data`` into a ``mode`` image, EXIF orientation applied.

    With ``size``, a JPEG is decoded in draft mode (DCT scaling by 1/2, 1/4 or 1/8) and other
    formats are box-reduced, as far as both sides stay >= ``size``: extractors that work on a
    small image then never pay for a full-resolution decode. GIFs give their first frame.
    Raises ``InvalidImage`` for anything that is not a readable image of a supported format,
    or that has more than ``max_pixels`` pixels (a decompression bomb; ``header``).
    """
    img = header(data, max_pixels)
    fmt = img.format
    try:
        if size and fmt in ("JPEG", "MPO"):
            img.draft(mode if mode in ("L", "RGB") else "RGB", (size, size))
        img.load()
        if size and fmt not in ("JPEG", "MPO"):
            factor = min(img.size[0] // size, img.size[1] // size, 8)
            if factor >= 2:
                img = img.reduce(factor)
        # exif_transpose copies the image even when there is nothing to turn: check first.
        if img.getexif().get(ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode != mode:
            img = img.convert(mode)
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise InvalidImage(f"truncated or corrupt image data: {exc}") from None
    return img
