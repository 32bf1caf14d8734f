"""OCR (no Ray): both engines, rapidocr (the default) and Tesseract, on rendered text and on
text drawn onto a real photo; boxes in original pixels; the engine option; bad input (no
text, a 20000x20 strip, models that do not load) and the rest of the app beside it."""

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.common import DEJAVU, rendered_line, text_fonts
from deployments.config import AppArgs, load_app_args
from deployments.engine import Engine
from deployments.ports import LocalExtractor
from extractors import WeightsUnavailable, build_extractor
from extractors.ocr import Ocr, TesseractOcr
from extractors.ocr_rapid import RapidOcr
from extractors.textdoc import decode_doc
from index_actors.client import IndexClient
from tests.helpers import encode

ENGINES = ("rapidocr", "tesseract")
ROOT = Path(__file__).resolve().parent.parent
LINES = [
    "Please sign here to receive your parcel",
    "Platform seven departures to Amsterdam",
    "Fresh bread baked every morning",
    "Museum opening hours Monday closed",
]


@pytest.fixture(scope="module", params=ENGINES)
def ocr(request: pytest.FixtureRequest) -> Ocr:
    """Each engine with its defaults, loaded once per module."""
    loaded = Ocr(engine=request.param)
    loaded.load()
    return loaded


def test_word_accuracy_on_rendered_text(ocr: Ocr) -> None:
    right = total = 0
    for size in (28, 44):
        for font in text_fonts(size):
            for angle in (-3.0, 0.0, 2.0):
                images = [rendered_line(line, font, angle) for line in LINES]
                for line, result in zip(LINES, ocr.analyze(images), strict=True):
                    got = {w["text"].lower().strip(".,") for w in result["words"]}
                    want = line.lower().split()
                    right += sum(w in got for w in want)
                    total += len(want)
                    assert all(0 <= w["confidence"] <= 100 for w in result["words"])
    assert right / total >= 0.9, f"{ocr.engine_name}: word accuracy {right / total:.2f}"


def test_rapidocr_reads_words_on_a_photo_with_boxes_in_original_pixels(
    photos: dict[str, bytes],
) -> None:
    """Two words on a light band across a real photo blown up to 3200 px: read at
    max_side 1600 (half the pixels each way), their boxes are where they were drawn in the
    3200-px image."""
    photo = Image.open(io.BytesIO(photos["Bridge_by_Sander_Klootwijk.jpg"])).convert("RGB")
    img = photo.resize((3200, 1800), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(DEJAVU / "DejaVuSans-Bold.ttf"), 110)
    draw.rectangle((0, 1150, img.width, 1400), fill=(240, 236, 228))
    drawn = {}
    x = 900
    for word in ("HARBOUR", "BAKERY"):
        draw.text((x, 1200), word, fill=(20, 20, 30), font=font)
        drawn[word] = draw.textbbox((x, 1200), word, font=font)
        x += draw.textlength(word + " ", font=font)
    ocr = Ocr(max_side=1600)
    (feature,) = ocr.extract_bytes([encode(img, quality=90)])
    doc = decode_doc(feature)
    assert doc["text"] == "HARBOUR BAKERY"
    for word in doc["words"]:
        left, top, width, height = word["box"]
        x0, y0, x1, y1 = drawn[word["text"]]
        # Each edge within half the letters' height (the detector grows a box around its
        # text); in the 1600-px image's pixels they would be ~1000 px off.
        edges = (left - x0, top - y0, left + width - x1, top + height - y1)
        assert max(abs(e) for e in edges) < (y1 - y0) / 2, (word, drawn[word["text"]])
        assert word["confidence"] >= ocr.min_confidence


def test_engine_option_and_its_own_options() -> None:
    """rapidocr by default; Tesseract keeps its languages; an engine's option given to the
    other, or an unknown engine, is refused with the options it takes."""
    assert isinstance(build_extractor("ocr").engine, RapidOcr)  # type: ignore[attr-defined]
    tesseract = build_extractor("ocr", {"engine": "tesseract", "languages": ["eng", "deu"]})
    assert isinstance(tesseract, Ocr) and isinstance(tesseract.engine, TesseractOcr)
    assert tesseract.engine.languages == ["eng", "deu"] and tesseract.decode_mode == "L"
    assert tesseract.min_confidence == 60
    with pytest.raises(ValueError, match=r"engine rapidocr has no option \['languages'\]"):
        build_extractor("ocr", {"languages": ["eng"]})
    with pytest.raises(ValueError, match="unknown engine 'easyocr'; known: rapidocr, tesseract"):
        build_extractor("ocr", {"engine": "easyocr"})
    with pytest.raises(ValueError, match="det_side"):
        build_extractor("ocr", {"det_side": 8})
    # The shipped config: rapidocr with the settings it names.
    args = load_app_args(ROOT / "configs" / "serve.yaml", "imgsearch")
    options = args.features["ocr"].options
    shipped = build_extractor("ocr", args.extractor_options("ocr"))
    assert isinstance(shipped, Ocr) and isinstance(shipped.engine, RapidOcr)
    assert options["engine"] == "rapidocr" and shipped.engine.det_side == options["det_side"]
    assert shipped.min_confidence == options["min_confidence"] and shipped.decode_mode == "RGB"


def test_no_text_and_a_20000x20_strip(ocr: Ocr, photos: dict[str, bytes]) -> None:
    """A plain image and a photo without text have no words; a 20000x20 strip (with text
    on it) and a 20x20000 one are read without failing, any box inside the image."""
    for img in (Image.new("RGB", (640, 480), (90, 120, 150)), Image.new("L", (5000, 1), 255)):
        assert ocr.analyze([img]) == [{"text": "", "words": []}]
    (doc,) = ocr.analyze([Image.open(io.BytesIO(photos["greentock_by_Peter_Nerlich.jpg"]))])
    assert doc["text"] == "" and doc["words"] == []  # moss and stone
    strip = Image.new("RGB", (20000, 20), "white")
    font = ImageFont.truetype(str(DEJAVU / "DejaVuSans.ttf"), 16)
    for x in range(0, 20000, 400):
        ImageDraw.Draw(strip).text((x, 1), "harbour bakery", fill="black", font=font)
    for img in (strip, strip.rotate(90, expand=True)):
        (feature,) = ocr.extract_bytes([encode(img, "PNG")])
        doc = decode_doc(feature)  # an InvalidImage would fail here
        for word in doc["words"]:
            left, top, width, height = word["box"]
            assert 0 <= left <= left + width <= img.width + 1
            assert 0 <= top <= top + height <= img.height + 1


def test_models_that_do_not_load_are_unavailable_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"PP-OCRv6_det_small\.onnx.*pip install rapidocr"):
        Ocr(model_dir=str(tmp_path)).load()
    for name in ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx"):
        (tmp_path / name).write_bytes(b"not an onnx model")
    with pytest.raises(WeightsUnavailable, match=f"rapidocr's models in {tmp_path} cannot load"):
        Ocr(model_dir=str(tmp_path)).load()
    with pytest.raises(WeightsUnavailable, match="tesseract-ocr-xyz"):
        Ocr(engine="tesseract", languages=["eng", "xyz"]).load()


def run(coro: Any) -> Any:
    """One engine call on a fresh event loop."""
    return asyncio.run(coro)


@contextlib.contextmanager
def app(tmp_path: Path, ocr_options: dict[str, Any]) -> Iterator[Engine]:
    """The engine in-process with phash, colour and OCR (``ocr_options``), on a fresh data
    directory."""
    features = {"phash": {}, "color": {}, "ocr": {"options": ocr_options}}
    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path), "features": features})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    client = IndexClient.local(tmp_path, args.index_specs())
    yield Engine(args, extractors, client)
    for (actor,) in client.shards.values():
        with contextlib.suppress(Exception):
            actor._obj.index.close()


def test_a_photo_without_text_is_stored_with_no_text(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    with app(tmp_path, {"max_side": 1000}) as engine:
        moss = photos["greentock_by_Peter_Nerlich.jpg"]
        added = run(engine.add(moss, 1, "moss", engine.indexed))
        assert added.features == {"phash": "ok", "color": "ok", "ocr": "ok"}
        info = run(engine.describe(1))
        assert info.features == ["phash", "color", "ocr"] and not info.text


def test_ocr_whose_models_fail_is_unavailable_and_the_rest_works(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    with app(tmp_path / "data", {"model_dir": str(tmp_path / "no-models")}) as engine:
        ocr = run(engine.health()).extractors["ocr"]
        assert ocr["available"] is False and "PP-OCRv6_det_small.onnx" in ocr["reason"]
        wine = photos["Wine_by_Jakkub_Mede.jpg"]
        status = run(engine.add(wine, 1, "wine", engine.indexed)).features
        assert status["phash"] == status["color"] == "ok"
        assert "pip install rapidocr" in status["ocr"]
        found = run(engine.search_image(wine, 1, None, {}))
        assert [r.image_id for r in found.results] == [1]
