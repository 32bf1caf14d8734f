"""models: images/s of the global-features network (EfficientNet-Lite0) at batch 1 against
its own larger batches, beside phash and colour (in-process, all cores, decoding
included); global must gain at least 1.5x from batching."""

from __future__ import annotations

import functools

from bench.common import Row, best_of, features, row
from extractors import Extractor, build_extractor


def bench_models(photos: dict[str, bytes], repeat: int, batches: list[int]) -> list[Row]:
    """images/s of each extractor at batch 1 and at ``batches``; global must gain >= 1.5x."""
    blobs = list(photos.values())
    blobs = (blobs * (-(-64 // len(blobs))))[:64]  # enough for the largest batch
    rows: list[Row] = []
    for name in ("global", "phash", "color"):
        ex = build_extractor(name)
        ex.load()
        features(ex, blobs[:2])  # warm-up: first calls allocate

        def run(size: int, ex: Extractor = ex) -> None:
            for lo in range(0, len(blobs), size):
                features(ex, blobs[lo : lo + size])

        best = best_of({str(b): functools.partial(run, b) for b in [1, *batches]}, repeat)
        rate = {int(b): len(blobs) / t for b, t in best.items()}
        top = max(batches, key=lambda b: rate[b])
        print(
            f"models: {name} images/s by batch size: "
            + ", ".join(f"{b}: {r:.1f}" for b, r in rate.items())
        )
        gain = rate[top] / rate[1]
        target, met = (">= 1.5x", gain >= 1.5) if name == "global" else ("info", None)
        rows += [
            row(f"{name} images/s, batch 1", rate[1], None, "info", None),
            row(f"{name} images/s, batch {top} / batch 1", rate[top], rate[1], target, met),
        ]
    return rows
