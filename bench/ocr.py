"""ocr: Tesseract's word accuracy (against the 0.9 target) and images/s on rendered lines
(Pillow's and DejaVu fonts, sizes 24-48, rotations of a few degrees, JPEG quality 40)."""

from __future__ import annotations

import time

from bench.common import Row, rendered_line, row, text_fonts


def bench_ocr() -> list[Row]:
    """Word accuracy and images/s of Tesseract on rendered lines."""
    from extractors.ocr import TesseractOcr

    lines = [
        "Please sign here to receive your parcel",
        "Platform seven departures to Amsterdam",
        "Fresh bread baked every morning",
        "Museum opening hours Monday closed",
        "Keep this door closed at all times",
        "Welcome to the annual summer festival",
    ]
    ocr = TesseractOcr()
    ocr.load()
    right = total = 0
    seconds = 0.0
    images = 0
    for size in (24, 32, 48):
        for font in text_fonts(size):
            for angle in (-3.0, -1.0, 0.0, 2.0, 4.0):
                batch = [rendered_line(line, font, angle) for line in lines]
                start = time.perf_counter()
                results = ocr.analyze(batch)
                seconds += time.perf_counter() - start
                images += len(batch)
                for line, result in zip(lines, results, strict=True):
                    got = {w["text"].lower().strip(".,") for w in result["words"]}
                    want = line.lower().split()
                    right += sum(w in got for w in want)
                    total += len(want)
    accuracy = right / total
    print(f"ocr: word accuracy {accuracy:.3f} over {images} lines, {images / seconds:.1f} images/s")
    return [
        row("ocr word accuracy (rendered lines)", accuracy, None, ">= 0.9", accuracy >= 0.9),
        row("ocr images/s (1400x200 lines, one core each)", images / seconds, None, "info", None),
    ]
