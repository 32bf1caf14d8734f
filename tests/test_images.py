"""Image decoding: formats, orientation, draft sizes and every kind of bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from extractors.images import InvalidImage, decode
from tests.helpers import encode, png_bomb


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_decodes(rgb: Image.Image, fmt: str) -> None:
    img = decode(encode(rgb, fmt))
    assert img.size == (200, 120)
    assert img.mode == "RGB"


def test_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    px = np.asarray(decode(buf.getvalue()))
    assert px[..., 0].mean() > 200 and px[..., 2].mean() < 50


def test_exif_orientation_is_applied(rgb: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img = decode(encode(rgb, "JPEG", exif=exif))
    assert img.size == (120, 200)


def test_draft_decodes_jpeg_small_but_not_below_target(photos: dict[str, bytes]) -> None:
    data = next(iter(photos.values()))
    full = decode(data)
    small = decode(data, size=96)
    assert min(small.size) >= 96
    assert small.size[0] < full.size[0]
    assert decode(data, mode="L", size=96).mode == "L"


def test_other_formats_are_box_reduced(rgb: Image.Image) -> None:
    big = rgb.resize((800, 480))
    assert decode(encode(big, "PNG"), size=100).size == (200, 120)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"hello, this is text and not a picture", 415, "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, 415, "not an image"),
    ],
)
def test_bad_bytes_raise_invalid_image(data: bytes, status: int, words: str) -> None:
    with pytest.raises(InvalidImage, match=words) as info:
        decode(data)
    assert info.value.status == status


def test_truncated_jpeg_is_invalid(photos: dict[str, bytes]) -> None:
    data = next(iter(photos.values()))
    with pytest.raises(InvalidImage, match="truncated") as info:
        decode(data[: len(data) // 2])
    assert info.value.status == 400


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidImage, match="megapixels") as info:
        decode(png_bomb())
    assert info.value.status == 413


def test_unsupported_format_is_415(rgb: Image.Image) -> None:
    with pytest.raises(InvalidImage, match="not supported") as info:
        decode(encode(rgb, "PCX"))
    assert info.value.status == 415


def test_invalid_image_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(InvalidImage("too big", 413)))
    assert isinstance(err, InvalidImage) and err.status == 413 and str(err) == "too big"
