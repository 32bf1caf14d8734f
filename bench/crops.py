"""crops: local features (SIFT keypoints, RootSIFT descriptors, ``KeypointIndex``) against
phash (the peer) on crops of the real photos: recall@1/@10, search latency (query extraction
included) and stored bytes per image, first among ``--crop-distractors`` distractors (exact
index), then among ``--crop-scale`` images, exact and trained (``--local-factory``).

The photos of ../shared/photos are split: most are stored originals, every fourth only feeds
distractor tiles (so no distractor contains a query's original). Queries are crops of 50, 25
and 10 % of an original's area, each also rotated 10 degrees and at half size, plus the two
classic pairs (graf1 -> graf3, box -> box_in_scene).
"""

from __future__ import annotations

import functools
import io
import os
import statistics
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from bench.common import Row, features, ms, row
from extractors.base import FUSED
from extractors.local import LocalFeatures
from extractors.phash import PHash
from index_actors.binary import BinaryIndex
from index_actors.keypoints import KeypointIndex
from scripts.train_index import train

AREAS = (50, 25, 10)
PAIRS = (("graf1", "graf3"), ("box_in_scene", "box"))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """``img`` as JPEG bytes."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def scene(rng: np.random.Generator) -> Image.Image:
    """A synthetic scene: a gradient, shapes, lines and a patch of noise texture."""
    w, h = int(rng.integers(400, 800)), int(rng.integers(300, 600))
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, w)[None, :, None]
    img = Image.fromarray(((a * (1 - ramp) + b * ramp) * np.ones((h, 1, 1))).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 20))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        pick = rng.random()
        if pick < 0.4:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif pick < 0.8:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 6)))
    noise = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    patch = Image.fromarray(noise).resize((w // 2, h // 2), Image.Resampling.BILINEAR)
    img.paste(patch, (int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))))
    return img


def tile(source: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random piece of a photo, rescaled, maybe mirrored, with its colours shifted."""
    w, h = source.size
    cw, ch = int(w * rng.uniform(0.15, 0.5)), int(h * rng.uniform(0.15, 0.5))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = source.crop((x, y, x + cw, y + ch))
    scale = rng.uniform(0.6, 1.2)
    img = img.resize((max(32, int(cw * scale)), max(32, int(ch * scale))))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    return ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))


@functools.cache
def _sources(paths: tuple[str, ...]) -> list[Image.Image]:
    return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in paths]


def distractor(i: int, sources: tuple[str, ...]) -> bytes:
    """Distractor ``i``: a tile of a held-out photo, or (every third) a synthetic scene."""
    rng = np.random.default_rng(10_000 + i)
    if i % 3 == 2 or not sources:
        return jpeg(scene(rng), 85)
    photos = _sources(sources)
    return jpeg(tile(photos[i % len(photos)], rng), 85)


def crops(data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """The issue's crop queries of one photo: kind -> JPEG bytes."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = img.size
    out = {}
    for area in AREAS:
        side = (area / 100) ** 0.5
        cw, ch = int(w * side), int(h * side)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        out[f"crop {area} %"] = jpeg(crop)
        out[f"crop {area} %, rotated 10 deg"] = jpeg(
            crop.rotate(10, Image.Resampling.BICUBIC, True)
        )
        out[f"crop {area} %, 0.5x"] = jpeg(
            crop.resize((cw // 2, ch // 2), Image.Resampling.LANCZOS)
        )
    return out


def _pair(folder: Path, stem: str) -> Image.Image:
    """A pairs image by name (PNG in ../shared/photos/pairs, JPEG in tests/photos/pairs)."""
    return Image.open(next(folder.glob(f"{stem}.*")))


@functools.cache
def _extractors() -> tuple[LocalFeatures, PHash]:
    return LocalFeatures(), PHash()


def stored_features(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(local, phash) features of an image to store."""
    local, phash = _extractors()
    return features(local, [data])[0], features(phash, [data])[0]


def _distractor_features(i: int, sources: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    return stored_features(distractor(i, sources))


def _parallel(calls: list[Any]) -> list[Any]:
    return joblib.Parallel(n_jobs=os.cpu_count() or 1)(calls)


def _bytes_per_image(index: KeypointIndex) -> tuple[float, float]:
    """(LMDB bytes, FAISS index bytes) per stored image."""
    with index.store.env.begin() as txn:
        stat = txn.stat(index.store.features)
    pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    n = max(index.count, 1)
    return pages * stat["psize"] / n, len(index._serialize(index.index)) / n


def _recall(
    index: Any, queries: list[tuple[str, int, np.ndarray]], **opts: Any
) -> tuple[dict[str, tuple[float, float]], list[float]]:
    """Per kind (recall@1, recall@10), and the search seconds of each query."""
    found: dict[str, list[tuple[bool, bool]]] = {}
    seconds = []
    for kind, truth, query in queries:
        start = time.perf_counter()
        hits = [i for i, _ in index.search(query, k=10, **opts)]
        seconds.append(time.perf_counter() - start)
        found.setdefault(kind, []).append((hits[:1] == [truth], truth in hits))
    return {
        kind: (statistics.fmean(a for a, _ in v), statistics.fmean(b for _, b in v))
        for kind, v in found.items()
    }, seconds


def bench_crops(
    photos: dict[str, bytes], pairs: Path, n_distractors: int, n_scale: int, factory: str, tmp: Path
) -> list[Row]:
    """Crop recall of local features against phash, latency and bytes per image."""
    names = sorted(photos)
    held_out = names[3::4]
    originals = {n: photos[n] for n in names if n not in held_out}
    for stored, _ in PAIRS:
        originals[stored] = jpeg(_pair(pairs, stored))
    sources = tuple(str(pairs.parent / n) for n in held_out)
    print(f"crops: {len(originals)} originals; distractor tiles of {', '.join(held_out)}")

    local_idx = KeypointIndex(tmp / "crops-local")
    phash_idx = BinaryIndex(tmp / "crops-phash", 576)
    ids = {name: i for i, name in enumerate(originals)}
    done = _parallel([joblib.delayed(stored_features)(d) for d in originals.values()])
    local_idx.add(list(ids.values()), [f for f, _ in done])
    phash_idx.add(list(ids.values()), np.stack([p for _, p in done]))

    def fill(lo: int, hi: int) -> float:
        start = time.perf_counter()
        made = _parallel([joblib.delayed(_distractor_features)(i, sources) for i in range(lo, hi)])
        elapsed = time.perf_counter() - start
        rng = list(range(1_000_000 + lo, 1_000_000 + hi))
        local_idx.add(rng, [f for f, _ in made])
        phash_idx.add(rng, np.stack([p for _, p in made]))
        return elapsed

    fill_s = fill(0, n_distractors)
    print(f"crops: {n_distractors} distractors extracted in {fill_s:.0f} s")

    # Queries: extracted here, one at a time, as a search request would be (timed).
    local, phash = _extractors()
    rng = np.random.default_rng(7)
    queries = [
        (kind, ids[name], blob)
        for name in names
        if name not in held_out
        for kind, blob in crops(photos[name], rng).items()
    ]
    queries += [("pairs", ids[stored], jpeg(_pair(pairs, query))) for stored, query in PAIRS]
    local_q, phash_q, extract_s = [], [], []
    # The same queries as a fused search reads them (at local's fused_query_max_area).
    fused_q, fused_s = [], []
    for kind, truth, blob in queries:
        start = time.perf_counter()  # extracted one at a time, as a search request is
        local_q.append((kind, truth, features(local, [blob], query=True)[0]))
        extract_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        fused_q.append((kind, truth, features(local, [blob], query=FUSED)[0]))
        fused_s.append(time.perf_counter() - start)
        phash_q.append((kind, truth, features(phash, [blob], query=True)[0]))

    rows: list[Row] = []

    def report(
        label: str,
        opts: dict[str, Any] | None = None,
        asked: list | None = None,
        extracted: list[float] | None = None,
    ) -> dict[str, tuple[float, float]]:
        """Recall and latency of the queries (``asked``, extracted in ``extracted`` s;
        default: the whole ones)."""
        asked, extracted = asked or local_q, extracted or extract_s
        got, secs = _recall(local_idx, asked, **(opts or {}))
        ph, _ = _recall(phash_idx, phash_q)
        total = [e + s for e, s in zip(extracted, secs, strict=True)]
        lmdb_b, index_b = _bytes_per_image(local_idx)
        print(f"crops {label}: {local_idx.count} images, {local_idx.index.ntotal} descriptors")
        for kind in got:
            print(
                f"  {kind:28s} local @1 {got[kind][0]:.2f} @10 {got[kind][1]:.2f}   "
                f"phash @1 {ph[kind][0]:.2f} @10 {ph[kind][1]:.2f}"
            )
        p50, p50_search = ms(total, 50), ms(secs, 50)
        print(
            f"  latency p50 {p50:.0f} ms (search {p50_search:.0f} ms, p95 {ms(total, 95):.0f} ms); "
            f"bytes/image: LMDB {lmdb_b / 1024:.1f} KB + index {index_b / 1024:.1f} KB"
        )
        for kind in got:
            for at, j in (("1", 0), ("10", 1)):
                rows.append(
                    row(
                        f"crops {label}: {kind} recall@{at}, local (peer phash)",
                        got[kind][j],
                        ph[kind][j] or None,
                        "info",
                        None,
                    )
                )
        pairs_found = got["pairs"][0] == 1.0
        rows.append(
            row(f"crops {label}: both pairs found @1", pairs_found, None, "yes", pairs_found)
        )
        rows.append(
            row(
                f"crops {label}: search p50 ms (extraction incl.)",
                p50,
                None,
                "<= 1000",
                p50 <= 1000,
            )
        )
        rows.append(row(f"crops {label}: index search p50 ms", p50_search, None, "info", None))
        kb = (lmdb_b + index_b) / 1024
        rows.append(
            row(f"crops {label}: KB per image (LMDB + index)", kb, 100.0, "<= 40", kb <= 40)
        )
        return got

    report(f"{local_idx.count} exact")
    report(f"{local_idx.count} exact, fused query", asked=fused_q, extracted=fused_s)
    if n_scale > local_idx.count:
        fill_s = fill(n_distractors, n_distractors + n_scale - local_idx.count)
        print(f"crops: grown to {local_idx.count} images ({fill_s:.0f} s)")
    # The exact index at this size, a few queries only (seconds each): the trained one's peer.
    exact_s = []
    for _, _, query in local_q[:3]:
        start = time.perf_counter()
        local_idx.search(query, k=10)
        exact_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    trained, _ = train(local_idx.sample(100_000), "l2", factory, None)
    adopted = local_idx.adopt(trained)
    print(f"crops: {factory} trained and filled in {time.perf_counter() - start:.0f} s: {adopted}")
    label = f"{local_idx.count} {factory} nprobe {local_idx.live['nprobe']}"
    report(label)
    _, secs = _recall(local_idx, local_q[:3])
    print(f"crops: exact index at {local_idx.count}: {ms(exact_s, 50):.0f} ms per search")
    rows.append(
        row(
            f"crops {label}: index search ms (peer exact)",
            ms(secs, 50),
            ms(exact_s, 50),
            "info",
            None,
        )
    )
    local_idx.close()
    phash_idx.close()
    return rows
