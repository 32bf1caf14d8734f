"""phash: images/s of our ``PHash`` (draft and full-resolution decoding) against
``imagehash.phash`` on the real photos, one image per call on one core, and the draft
decoder's Hamming distance to imagehash's hash (also at camera size, 4000 px)."""

from __future__ import annotations

import io
import statistics

import imagehash
import numpy as np
from PIL import Image

from bench.common import Row, best_of, features, row
from extractors import PHash


def bench_phash(photos: dict[str, bytes], repeat: int) -> list[Row]:
    """images/s of PHash (draft and full resolution) against imagehash, and draft accuracy."""
    blobs = list(photos.values())
    # The hash alone, as imagehash computes it (the stored feature adds the mirrored one).
    draft, full = PHash(mirror=False), PHash(draft=False, mirror=False)

    def exact(data: bytes) -> np.ndarray:
        return imagehash.phash(Image.open(io.BytesIO(data)), hash_size=24).hash.ravel()

    # One image per call, as a lone request reaches a replica.
    best = best_of(
        {
            "draft": lambda: [features(draft, [b]) for b in blobs],
            "full": lambda: [features(full, [b]) for b in blobs],
            "imagehash": lambda: [exact(b) for b in blobs],
        },
        repeat,
    )
    rate = {name: len(blobs) / t for name, t in best.items()}
    truth = [exact(b) for b in blobs]
    draft_d = [
        int(np.count_nonzero(np.unpackbits(f).astype(bool) != t))
        for f, t in zip(features(draft, blobs), truth, strict=True)
    ]
    full_d = [
        int(np.count_nonzero(np.unpackbits(f).astype(bool) != t))
        for f, t in zip(features(full, blobs), truth, strict=True)
    ]
    mean_d = statistics.fmean(draft_d)
    print(
        f"phash: draft {rate['draft']:.1f}/s, full {rate['full']:.1f}/s, "
        f"imagehash {rate['imagehash']:.1f}/s; draft Hamming per photo {draft_d}"
    )
    r_draft = rate["draft"] / rate["imagehash"]
    # Camera-sized images: the photos upscaled to 4000 px (smoother than real 12 MP photos,
    # so this flatters the draft decoder a little; it shows how the ratio grows with size).
    big = []
    for b in blobs[:8]:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        img = img.resize((4000, 4000 * img.height // img.width), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        big.append(out.getvalue())
    best_big = best_of(
        {
            "draft": lambda: [features(draft, [b]) for b in big],
            "imagehash": lambda: [exact(b) for b in big],
        },
        repeat,
    )
    big_rate = {name: len(big) / t for name, t in best_big.items()}
    big_d = [
        int(np.count_nonzero(np.unpackbits(f).astype(bool) != exact(b)))
        for f, b in zip(features(draft, big), big, strict=True)
    ]
    print(f"phash at 4000 px: draft Hamming per image {big_d}")
    return [
        row("phash draft images/s", rate["draft"], rate["imagehash"], ">= 4x", r_draft >= 4),
        row("phash full-res images/s", rate["full"], rate["imagehash"], "info", None),
        row("phash draft Hamming mean (of 576)", mean_d, None, "<= 6", mean_d <= 6),
        row("phash draft Hamming max", max(draft_d), None, "info", None),
        row("phash full-res Hamming max", max(full_d), None, "0", max(full_d) == 0),
        row(
            "phash draft images/s, 4000 px", big_rate["draft"], big_rate["imagehash"], "info", None
        ),
        row("phash draft Hamming mean, 4000 px", statistics.fmean(big_d), None, "info", None),
    ]
