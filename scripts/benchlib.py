"""The result rows the benchmark sections share (``scripts/bench.py``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from extractors import Extractor, InvalidImage

Row = dict[str, Any]


def row(metric: str, ours: float, peer: float | None, target: str, met: bool | None) -> Row:
    """One line of the final table; ``ratio`` is ours / peer."""
    ratio = ours / peer if peer else None
    return {
        "metric": metric,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def ms(latencies: list[float], q: float) -> float:
    """Percentile ``q`` of latencies in seconds, in milliseconds."""
    return float(np.percentile(latencies, q)) * 1000


def features(extractor: Extractor, blobs: list[bytes], query: bool = False) -> list[np.ndarray]:
    """``extract_bytes`` for inputs known to be good: a bad one is a bench bug, so it raises."""
    out = []
    for result in extractor.extract_bytes(blobs, query=query):
        if isinstance(result, InvalidImage):
            raise result
        out.append(result)
    return out


DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def text_fonts(size: int) -> list[Font]:
    """Pillow's own font, and DejaVu Sans / Serif Bold where the system has them."""
    fonts: list[Font] = [ImageFont.load_default(size)]
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"):
        if (DEJAVU / name).exists():
            fonts.append(ImageFont.truetype(str(DEJAVU / name), size))
    return fonts


def rendered_line(line: str, font: Font, angle: float, quality: int = 40) -> Image.Image:
    """A line of dark text on a light background, rotated ``angle`` degrees, as a JPEG."""
    img = Image.new("RGB", (1400, 200), (245, 240, 230))
    ImageDraw.Draw(img).text((40, 60), line, fill=(20, 20, 30), font=font)
    img = img.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(245, 240, 230))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))
