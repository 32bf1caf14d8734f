"""Text analyzers (issue 5, no Ray): ImageNet tags from the global network, Tesseract OCR
on rendered text (fonts, sizes, small rotations, JPEG noise)."""

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from extractors import WeightsUnavailable
from extractors.analyzers import Captioner, ImageNetTagger, TesseractOcr
from scripts.benchlib import rendered_line, text_fonts
from tests.helpers import tiny_blip_dir

LINES = [
    "Please sign here to receive your parcel",
    "Platform seven departures to Amsterdam",
    "Fresh bread baked every morning",
    "Museum opening hours Monday closed",
]


def test_ocr_word_accuracy_on_rendered_text() -> None:
    ocr = TesseractOcr()
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
    assert right / total >= 0.9, f"word accuracy {right / total:.2f}"


def test_ocr_of_an_image_without_text_and_a_missing_language() -> None:
    (result,) = TesseractOcr().analyze([Image.new("RGB", (640, 480), (90, 120, 150))])
    assert result == {"text": "", "words": []}
    with pytest.raises(WeightsUnavailable, match="tesseract-ocr-xyz"):
        TesseractOcr(languages=["eng", "xyz"]).load()


def test_large_images_are_read_downscaled_with_boxes_in_original_pixels() -> None:
    img = Image.new("RGB", (4000, 1000), "white")
    font = ImageFont.load_default(120)
    ImageDraw.Draw(img).text((2000, 400), "HARBOUR", fill="black", font=font)
    (result,) = TesseractOcr(max_side=1000).analyze([img])
    (word,) = [w for w in result["words"] if w["text"] == "HARBOUR"]
    assert 1900 <= word["box"][0] <= 2100  # x in the 4000 px image, not the 1000 px one


def test_imagenet_tags(photos: dict[str, bytes]) -> None:
    tagger = ImageNetTagger(cutoff=0.05)
    (tags,) = tagger.analyze([Image.open(io.BytesIO(photos["Bridge_by_Sander_Klootwijk.jpg"]))])
    labels = [t["label"] for t in tags["tags"]]
    assert "suspension bridge" in labels  # the whole frame (crop_pct 1): also poles, a crane
    assert all(t["score"] >= 0.05 for t in tags["tags"]) and len(labels) <= 5
    with pytest.raises(ValueError):
        ImageNetTagger(cutoff=0)


def test_captioner_runs_the_real_generate_path(tmp_path: Path) -> None:
    folder = tiny_blip_dir(tmp_path / "blip")
    images = [Image.new("RGB", (64, 48), (200, 10, 10)), Image.new("RGB", (40, 80), "blue")]
    for beams in (1, 3):
        captioner = Captioner(model=str(folder), num_beams=beams, max_new_tokens=4)
        captions = captioner.analyze(images)
        assert len(captions) == 2
        assert all("bridge" in c["caption"].split() for c in captions), captions
    with pytest.raises(WeightsUnavailable, match=r"fetch_models\.py caption"):
        Captioner(model=str(tmp_path / "nothing-here")).load()
    with pytest.raises(WeightsUnavailable, match="not available"):
        Captioner(model="Salesforce/not-cached-anywhere").load()  # offline: not in the cache
    with pytest.raises(ValueError):
        Captioner(num_beams=0)
