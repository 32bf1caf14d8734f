"""ocr: word recall and images/s of both OCR engines, the default (rapidocr) against
Tesseract, on text in photos and on rendered lines.

- Photos: words and short phrases rendered onto the shared 1600-px photos (``photo_cases``):
  DejaVu fonts of 28-88 px (smaller where a phrase would not fit), anywhere, in a colour
  that stands out from what is under it or dark on a light band; upright, tilted by 2-10
  degrees either way, or the whole photo seen at an angle (a perspective warp); every other
  image saved at JPEG quality 40. Seeded:
  the same cases every run. Recall counts a rendered word found among the words of the text
  the extractor stores (what text search matches). Target: >= 0.95 with the default engine.
- Rendered lines: a line of dark text on a light background (Pillow's and DejaVu fonts,
  sizes 24-48, rotations of a few degrees, JPEG quality 40), the section's first target.

``python -m bench.ocr --sweep`` measures rapidocr's detection settings on the photo cases
(the defaults in configs/serve.yaml come from it).
"""

from __future__ import annotations

import argparse
import io
import random
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.common import DEJAVU, Row, load_photos, rendered_line, row, text_fonts
from extractors.ocr import Ocr
from extractors.textdoc import words

#: Words a sign, a label or a poster in a photo might carry, and a person might search for.
VOCABULARY = words(
    "bakery harbour station museum closed entrance garden coffee market library pharmacy "
    "hotel platform tickets welcome summer festival parking bridge river mountain open daily "
    "fresh bread wine cellar sunset beach north exit gallery concert theatre school street "
    "avenue village castle tower forest trail lake island airport taxi police office bank "
    "pizza restaurant dinner breakfast sale monday friday kitchen flowers bicycle"
)
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansCondensed.ttf",
)
SIZES = (28, 36, 48, 64, 88)
LIGHT = ((250, 250, 250), (255, 220, 40), (170, 235, 255))
DARK = ((15, 15, 20), (140, 20, 20), (20, 30, 110))
BAND = (240, 236, 228, 220)
#: Per photo: (geometry, band), each once.
LAYOUTS = (("upright", False), ("upright", True), ("tilt", False), ("warp", True))


@dataclass(frozen=True)
class Case:
    """One photo with text on it: its JPEG bytes and the words rendered there."""

    name: str
    data: bytes
    words: tuple[str, ...]


def _phrases(rng: random.Random) -> list[str]:
    """One or two phrases of one to three words, no word twice, in one case of letters."""
    counts = [rng.choice((1, 1, 2, 3)) for _ in range(rng.choice((1, 2)))]
    picked = iter(rng.sample(VOCABULARY, sum(counts)))
    out = []
    for n in counts:
        style = rng.choice((str.capitalize, str.upper, str.lower))
        out.append(" ".join(style(next(picked)) for _ in range(n)))
    return out


def _text_layer(
    base: Image.Image,
    phrase: str,
    row_box: tuple[int, int],
    band: bool,
    tilt: float,
    rng: random.Random,
) -> Image.Image:
    """A transparent layer with ``phrase`` (on a light band when ``band``) somewhere in the
    rows ``row_box`` of ``base``, turned ``tilt`` degrees about its centre."""
    face, size = str(DEJAVU / rng.choice(FONTS)), rng.choice(SIZES)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    margin = int(0.1 * base.width)
    room = base.width - 2 * margin
    font = ImageFont.truetype(face, size)
    if draw.textlength(phrase, font=font) > room:  # a long phrase on a portrait photo
        font = ImageFont.truetype(face, int(size * room / draw.textlength(phrase, font=font)))
    left, top, right, bottom = draw.textbbox((0, 0), phrase, font=font)
    w, h = int(right - left), int(bottom - top)
    x = rng.randint(margin, max(margin, base.width - margin - w))
    y = rng.randint(row_box[0], max(row_box[0], row_box[1] - h))
    if band:
        pad = h // 2
        draw.rectangle((x - pad, y - pad, x + w + pad, y + h + pad), fill=BAND)
        colour = rng.choice(DARK)
    else:
        # A colour that stands out from what is under the text, as a sign's would.
        under = base.convert("L").crop((x, y, x + w, y + h))
        colour = rng.choice(DARK if np.mean(np.asarray(under)) > 128 else LIGHT)
    draw.text((x - left, y - top), phrase, fill=colour, font=font)
    centre = (x + w / 2, y + h / 2)
    return layer.rotate(tilt, Image.Resampling.BICUBIC, center=centre) if tilt else layer


def _warp(img: Image.Image, rng: random.Random) -> Image.Image:
    """The photo seen from one side: one vertical edge shrunk by up to 12 %."""
    w, h = img.size
    d = rng.uniform(0.06, 0.12) * h
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    right = [[0, 0], [w, d], [w, h - d], [0, h]]
    left = [[0, d], [w, 0], [w, h], [0, h - d]]
    dst = np.array(right if rng.random() < 0.5 else left, dtype=np.float32)
    pixels = cv2.warpPerspective(
        np.asarray(img),
        cv2.getPerspectiveTransform(src, dst),
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return Image.fromarray(pixels)


def photo_cases(photos: dict[str, bytes], seed: int = 16) -> list[Case]:
    """Text rendered onto each photo in every layout (``LAYOUTS``): one or two phrases, each
    in its own half of the photo; JPEG quality 40 for every other image, 85 for the rest."""
    rng = random.Random(seed)
    cases = []
    for i, (name, data) in enumerate(sorted(photos.items())):
        base = Image.open(io.BytesIO(data)).convert("RGB")
        for j, (geometry, band) in enumerate(LAYOUTS):
            img = base.copy().convert("RGBA")
            phrases = _phrases(rng)
            for k, phrase in enumerate(phrases):
                half = base.height // len(phrases)
                rows = (k * half + base.height // 12, (k + 1) * half - base.height // 12)
                tilt = rng.choice((-1, 1)) * rng.uniform(2, 10) if geometry == "tilt" else 0.0
                img.alpha_composite(_text_layer(base, phrase, rows, band, tilt, rng))
            img = img.convert("RGB")
            if geometry == "warp":
                img = _warp(img, rng)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=40 if (i + j) % 2 else 85)
            found = tuple(w for p in phrases for w in words(p))
            cases.append(Case(f"{name}:{geometry}{'+band' if band else ''}", buf.getvalue(), found))
    return cases


def read_cases(ocr: Ocr, cases: list[Case]) -> tuple[list[dict[str, Any]], float]:
    """Each case's OCR document (decoded as the app decodes uploads), and seconds in all."""
    docs = []
    seconds = 0.0
    for case in cases:
        start = time.perf_counter()
        docs.extend(ocr.analyze([ocr.decode(case.data)]))
        seconds += time.perf_counter() - start
    return docs, seconds


def recall(cases: list[Case], docs: list[dict[str, Any]]) -> float:
    """Share of the rendered words found among the words of the stored text."""
    found = total = 0
    for case, doc in zip(cases, docs, strict=True):
        got = set(words(doc["text"]))
        found += sum(w in got for w in case.words)
        total += len(case.words)
    return found / total


def _rendered_lines(engines: dict[str, Ocr]) -> tuple[dict[str, float], dict[str, float]]:
    lines = [
        "Please sign here to receive your parcel",
        "Platform seven departures to Amsterdam",
        "Fresh bread baked every morning",
        "Museum opening hours Monday closed",
        "Keep this door closed at all times",
        "Welcome to the annual summer festival",
    ]
    right = dict.fromkeys(engines, 0)
    seconds = dict.fromkeys(engines, 0.0)
    total = images = 0
    for size in (24, 32, 48):
        for font in text_fonts(size):
            for angle in (-3.0, -1.0, 0.0, 2.0, 4.0):
                batch = [rendered_line(line, font, angle) for line in lines]
                images += len(batch)
                total += sum(len(line.split()) for line in lines)
                for name, ocr in engines.items():
                    start = time.perf_counter()
                    results = ocr.analyze(batch)
                    seconds[name] += time.perf_counter() - start
                    for line, result in zip(lines, results, strict=True):
                        got = {w["text"].lower().strip(".,") for w in result["words"]}
                        right[name] += sum(w in got for w in line.lower().split())
    return (
        {n: right[n] / total for n in engines},
        {n: images / seconds[n] for n in engines},
    )


def bench_ocr(photos: dict[str, bytes]) -> list[Row]:
    """Word recall and images/s of rapidocr (the default) beside Tesseract, on text in
    photos and on rendered lines."""
    engines = {"rapidocr": Ocr(), "tesseract": Ocr(engine="tesseract")}
    for ocr in engines.values():
        ocr.load()
    cases = photo_cases(photos)
    docs: dict[str, list[dict[str, Any]]] = {n: [] for n in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for case in cases:  # interleaved, so that the shared cores' drift hits both
        for name, ocr in engines.items():
            found, took = read_cases(ocr, [case])
            docs[name] += found
            seconds[name] += took
    got = {n: recall(cases, docs[n]) for n in engines}
    speed = {n: len(cases) / seconds[n] for n in engines}
    for name in engines:
        print(
            f"ocr {name}: word recall {got[name]:.3f} on {len(cases)} photos with text, "
            f"{speed[name]:.2f} images/s"
        )
        for layout in sorted({c.name.split(":")[1] for c in cases}):
            picked = [i for i, c in enumerate(cases) if c.name.endswith(":" + layout)]
            share = recall([cases[i] for i in picked], [docs[name][i] for i in picked])
            print(f"  {layout}: {share:.3f}")
    lines, line_speed = _rendered_lines(engines)
    for name in engines:
        print(f"ocr {name}: rendered lines word accuracy {lines[name]:.3f}, ", end="")
        print(f"{line_speed[name]:.1f} images/s")
    r, t = "rapidocr", "tesseract"
    return [
        row("ocr word recall, text in photos (rapidocr vs tesseract)", got[r], got[t],
            ">= 0.95", got[r] >= 0.95),
        row("ocr images/s, 1600-px photos (rapidocr vs tesseract)", speed[r], speed[t],
            "info", None),
        row("ocr word accuracy, rendered lines (rapidocr vs tesseract)", lines[r], lines[t],
            ">= 0.9", lines[r] >= 0.9),
        row("ocr images/s, 1400x200 lines (rapidocr vs tesseract)", line_speed[r],
            line_speed[t], "info", None),
    ]  # fmt: skip


#: The sweep: rapidocr's defaults, then one change at a time (threads last: onnxruntime's
#: spare threads spin for a while after each image, which slows whatever runs next).
SWEEP: tuple[dict[str, Any], ...] = (
    {},
    {"det_side": 640},
    {"det_side": 960},
    {"det_side": 1280},
    {"box_thresh": 0.3},
    {"box_thresh": 0.5},
    {"unclip_ratio": 1.6},
    {"unclip_ratio": 2.4},
    {"threads": 2},
)


def sweep(photos: dict[str, bytes], settings: tuple[dict[str, Any], ...] = SWEEP) -> None:
    """Word recall and images/s of rapidocr on the photo cases for each setting (interleaved
    case by case, so that the shared cores' drift hits all), and the recall and the stray
    words per image at each confidence cut."""
    cases = photo_cases(photos)
    rendered = {w for c in cases for w in c.words}
    engines = [Ocr(min_confidence=0, **options) for options in settings]
    docs: list[list[dict[str, Any]]] = [[] for _ in settings]
    seconds = [0.0] * len(settings)
    for ocr in engines:
        ocr.load()
    for case in cases:
        for i, ocr in enumerate(engines):
            found, took = read_cases(ocr, [case])
            docs[i] += found
            seconds[i] += took
    for options, got, took in zip(settings, docs, seconds, strict=True):
        cuts = []
        for cut in (0, 50, 60, 70, 80, 90):
            kept = [
                {"text": " ".join(w["text"] for w in d["words"] if w["confidence"] >= cut)}
                for d in got
            ]
            stray = sum(len(set(words(d["text"])) - rendered) for d in kept) / len(cases)
            cuts.append(f"{cut}: {recall(cases, kept):.3f}/{stray:.2f}")
        print(
            f"{options}: {len(cases) / took:.2f} images/s; recall/stray words per image at "
            f"min_confidence {', '.join(cuts)}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ocr", description=__doc__)
    parser.add_argument("--sweep", action="store_true", help="rapidocr's settings")
    if parser.parse_args().sweep:
        sweep(load_photos())
    else:
        for line in bench_ocr(load_photos()):
            print(line)
