"""footprint: bytes per image of every feature of the default config (``configs/serve.yaml``)
on the real photos: on disk (its LMDB values) and in memory (its index as it opens, exact,
and the trained index a large collection switches to), and what that makes of 100M and 1B
images: 64 GiB nodes and shards, disk per node, and the per-shard search that each search
fans out to (a phash Flat scan, timed here at 1M hashes and scaled to the shard's size).

A feature whose weights are missing is measured from its width where its size is fixed
(CLIP's vectors: synthetic ones) and left out otherwise (captions), with a note.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import ROOT, GiB, Row, row
from deployments.config import load_app_args
from extractors import REGISTRY, InvalidImage, WeightsUnavailable, build_extractor
from index_actors.base import METRICS
from index_actors.kinds import open_index

#: What a large collection trains (scripts/train_index.py; bench vectors and crops measure
#: their recall): codes of this size replace the exact rows in memory.
TRAINED = {"vector": "PCAR256,IVF1024,PQ64", "keypoints": "IVF1024,PQ16"}
#: Of a 64 GiB node, what the indexes may fill: the rest is the OS, LMDB's page cache (the
#: re-ranking and keypoint geometry read it) and the Ray processes (~0.3 GiB per actor).
NODE_GIB, INDEX_GIB = 64, 48
SCALES = (100_000_000, 1_000_000_000)
COPIES = 20


def _features(name: str, options: dict[str, Any], dim: int | str, photos: list[bytes]) -> Any:
    """The feature of each photo, or synthetic vectors of the width when the weights are
    missing (None where a size cannot be known without them)."""
    try:
        extractor = build_extractor(name, options)
        return [f for f in extractor.extract_bytes(photos) if not isinstance(f, InvalidImage)]
    except WeightsUnavailable:
        if REGISTRY[name].kind != "vector" or not isinstance(dim, int):
            return None
        rows = np.random.default_rng(0).normal(size=(len(photos), dim)).astype(np.float32)
        return list(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def _trained_bytes(kind: str, dim: int, metric: str) -> float:
    """Bytes per entry of the trained index in memory: its code and the 8-byte id."""
    if kind == "keypoints":
        template = faiss.index_factory(dim, TRAINED[kind], faiss.METRIC_L2)
    else:
        template = faiss.index_factory(dim, TRAINED[kind], METRICS[metric])
    return float(faiss.extract_index_ivf(template).code_size + 8)


def _measure(name: str, args: Any, photos: list[bytes], tmp: Path) -> dict[str, Any] | None:
    kind = REGISTRY[name].kind
    dim = args.dims([name])[name]
    feats = _features(name, args.extractor_options(name), dim, photos)
    if feats is None or not feats:
        return None
    options = args.index_options(name)
    index: Any = open_index(kind, tmp / name, dim if isinstance(dim, int) else 0, **options)
    # Each photo's feature under COPIES ids: a text index's vocabulary is shared by many
    # images, so its cost per image is its postings, not the first image's new words.
    feats = [f for f in feats for _ in range(COPIES)]
    ids = list(range(1, len(feats) + 1))
    tracemalloc.start()
    index.add(ids, feats)
    python_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = len(ids)
    stored = sum(len(v) + 8 for _, v in index.store.items()) / n
    if kind == "text":  # the embedded index's word tables are Python objects
        exact = trained = python_bytes / n
        entries = 1.0
    else:
        exact = len(index._serialize(index.index)) / n
        entries = index.index.ntotal / n  # keypoints: descriptors per image
        metric = options.get("metric", "l2")
        width = int(index.index.d)
        trained = entries * _trained_bytes(kind, width, metric) if kind in TRAINED else exact
    index.close()
    return {"stored": stored, "exact": exact, "trained": trained, "entries": entries}


def _flat_scan_ms(n: int = 1_000_000, searches: int = 20) -> float:
    """p50 of a k=20 search over ``n`` 576-bit hashes (binary Flat, one thread)."""
    rng = np.random.default_rng(0)
    flat = faiss.IndexBinaryFlat(576)
    flat.add(rng.integers(0, 256, (n, 72), dtype=np.uint8))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        took = []
        for q in rng.integers(0, 256, (searches, 1, 72), dtype=np.uint8):
            start = time.perf_counter()
            flat.search(q, 20)
            took.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(took)) * 1000


def bench_footprint(photos: dict[str, bytes], tmp: Path) -> list[Row]:
    """Bytes per image per feature, and the projection to 100M and 1B images."""
    args = load_app_args(ROOT / "configs" / "serve.yaml", "imgsearch")
    measured: dict[str, dict[str, Any]] = {}
    for name in args.enabled:
        found = _measure(name, args, list(photos.values()), tmp)
        if found is None and REGISTRY[name].kind == "vector":
            # Trained codes have one size whatever the width: counted, exact size unknown.
            code = _trained_bytes("vector", 512, "ip")
            print(f"footprint: {name}: width unknown without weights; {code:.0f} B trained")
            found = {"stored": 0.0, "exact": 0.0, "trained": code, "entries": 1.0}
        elif found is None:
            print(f"footprint: {name}: not measured (its weights are missing)")
            continue
        measured[name] = found
        print(
            f"footprint: {name}: {found['stored']:.0f} B/image in LMDB, "
            f"{found['exact']:.0f} B in memory exact, {found['trained']:.0f} B trained"
            + (f" ({found['entries']:.0f} descriptors)" if found["entries"] > 1 else ""),
            flush=True,
        )
    memory = sum(m["trained"] for m in measured.values())
    disk = sum(m["stored"] for m in measured.values())
    scan = _flat_scan_ms()
    rows = [
        row(f"{n} bytes/image in memory (trained), exact", m["trained"], m["exact"], "info", None)
        for n, m in measured.items()
    ]
    rows += [
        row(f"{n} bytes/image in LMDB", m["stored"], None, "info", None)
        for n, m in measured.items()
    ]
    rows.append(row("phash Flat scan ms per 1M hashes, one thread", scan, None, "info", None))
    for images in SCALES:
        nodes = math.ceil(images * memory / (INDEX_GIB * GiB))
        per_shard = images / nodes
        print(
            f"footprint: {images / 1e6:.0f}M images ({', '.join(measured)}): "
            f"{images * memory / GiB:.0f} GiB of indexes -> {nodes} nodes of {NODE_GIB} GiB "
            f"(one shard per feature each, {per_shard / 1e6:.1f}M images a shard), "
            f"{images * disk / nodes / GiB:.0f} GiB of LMDB per node; each search fans out "
            f"to {nodes} shards, phash scanning {per_shard / 1e6:.1f}M hashes in "
            f"~{scan * per_shard / 1e6:.0f} ms"
        )
        label = f"{images // 1_000_000}M"
        rows += [
            row(
                f"{label}: nodes of {NODE_GIB} GiB (= shards per feature)",
                nodes,
                None,
                "info",
                None,
            ),
            row(f"{label}: LMDB GiB per node", images * disk / nodes / GiB, None, "info", None),
            row(f"{label}: phash scan ms per shard", scan * per_shard / 1e6, None, "info", None),
        ]
    return rows
