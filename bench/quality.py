"""quality: recall@1 of the original for edited copies of the real photos (resize 25 %,
JPEG 30, centre crop 70 %, mirror, +30 % brightness) among synthetic distractors, global
features against phash (the peer) and colour, with the real index classes."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT, Row, features, row
from deployments.config import AppArgs
from extractors import build_extractor
from index_actors.kinds import open_index


def distractors(n: int) -> list[bytes]:
    """Images that are no photo's original: random crops of the real photos in
    ../shared/photos/pairs (graffiti, a box in a scene), then synthetic scenes (gradients
    and shapes) for the rest."""
    from PIL import ImageDraw

    rng = np.random.default_rng(3)
    out = []

    def jpeg(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=85)
        return buf.getvalue()

    pairs = sorted((ROOT.parent / "shared" / "photos" / "pairs").glob("*.png"))
    for i in range(min(n // 2, 40 * len(pairs))):
        photo = Image.open(pairs[i % len(pairs)])
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.3, 0.8)), int(h * rng.uniform(0.3, 0.8))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(jpeg(photo.crop((x, y, x + cw, y + ch))))
    while len(out) < n:
        w, h = int(rng.integers(480, 1024)), int(rng.integers(360, 768))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, w)[None, :, None]
        base = (a * (1 - ramp) + b * ramp) * np.ones((h, 1, 1))
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((x0, y0, x1, y1), fill=fill)
        out.append(jpeg(img))
    return out


def edits(data: bytes) -> dict[str, bytes]:
    """The issue's five transforms of a photo, as JPEG bytes."""
    from PIL import ImageEnhance, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = img.size
    cw, ch = int(w * 0.7**0.5), int(h * 0.7**0.5)

    def jpeg(im: Image.Image, quality: int = 90) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    return {
        "resize 25 %": jpeg(img.resize((w // 4, h // 4), Image.Resampling.LANCZOS)),
        "JPEG q30": jpeg(img, 30),
        "centre crop 70 %": jpeg(
            img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
        ),
        "mirror": jpeg(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "brightness +30 %": jpeg(ImageEnhance.Brightness(img).enhance(1.3)),
    }


def bench_quality(photos: dict[str, bytes], n_distractors: int, tmp: Path) -> list[Row]:
    """recall@1 of the original per transform and feature, with the real index classes."""
    originals = list(photos.values())
    stored = originals + distractors(n_distractors)
    queries = [edits(d) for d in originals]
    kinds = list(queries[0])
    rows: list[Row] = []
    recall: dict[str, dict[str, float]] = {}
    for name in ("global", "phash", "color"):
        ex = build_extractor(name)
        ex.load()
        idx = open_index(
            ex.kind,
            tmp / f"quality-{name}",
            ex.dim,
            **AppArgs.model_validate({"features": {name: {}}}).index_options(name),
        )
        for lo in range(0, len(stored), 32):
            chunk = stored[lo : lo + 32]
            idx.add(list(range(lo, lo + len(chunk))), np.stack(features(ex, chunk)))
        recall[name] = {}
        for kind in kinds:
            hits = [idx.search(features(ex, [q[kind]], query=True)[0], k=1)[0][0] for q in queries]
            recall[name][kind] = statistics.fmean(h == i for i, h in enumerate(hits))
        idx.close()
    print(f"quality: {len(originals)} photos among {n_distractors} distractors")
    for kind in kinds:
        print(
            f"quality: {kind}: recall@1 " + ", ".join(f"{n} {recall[n][kind]:.2f}" for n in recall)
        )
        rows += [
            row(
                f"recall@1 {kind}: global (peer phash)",
                recall["global"][kind],
                recall["phash"][kind] or None,
                "info",
                None,
            ),
            row(f"recall@1 {kind}: colour", recall["color"][kind], None, "info", None),
        ]
    return rows
