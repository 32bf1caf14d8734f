"""ingest: images/s of the Ray Data ingest (``deployments/ingest.py``) into the deployed app
against the seed's way, a joblib loop (``n_jobs=2``) over the same files that also stores what
it computed (LMDB + FAISS in-process); ours must reach 0.8x of it."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from ray.data import DataContext

from bench.common import LocalApp, Row, features, row
from deployments.config import AppArgs
from deployments.ingest import ingest
from extractors import Extractor, build_extractor


@functools.lru_cache(maxsize=16)
def _worker_extractor(name: str, options: str) -> Extractor:
    """One extractor per joblib worker process (a model loads once, not once per file)."""
    ex = build_extractor(name, json.loads(options))
    ex.load()
    return ex


def _joblib_features(path: str, options: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """One file's features, computed in a joblib worker (the seed's way)."""
    data = Path(path).read_bytes()
    return {
        n: features(_worker_extractor(n, json.dumps(o, sort_keys=True)), [data])[0]
        for n, o in options.items()
    }


def bench_ingest(
    args: AppArgs, photos: dict[str, bytes], n_files: int, pool_size: int, tmp: Path
) -> list[Row]:
    """Ray Data ingest into the running app against joblib over the same files."""
    folder = tmp / "ingest"
    folder.mkdir()
    items = list(photos.items())
    for i in range(n_files):  # copies under new names: each one is new to the app
        name, data = items[i % len(items)]
        (folder / f"{i:05d}_{name}").write_bytes(data)
    paths = sorted(str(p) for p in folder.iterdir())
    options = {n: args.extractor_options(n) for n in args.enabled}
    for o in options.values():
        o.pop("threads", None)  # two single-process workers share the cores, as Ray's pools

    # A module's function (bench.ingest, not __main__): the workers import it by name, and
    # keep its model cache.
    start = time.perf_counter()
    feats = joblib.Parallel(n_jobs=2)(joblib.delayed(_joblib_features)(p, options) for p in paths)
    # The peer also stores what it computed: LMDB + FAISS in-process, in batches of 64.
    local = LocalApp(args, tmp / "joblib")
    for lo in range(0, len(paths), 64):
        batch = range(lo, min(lo + 64, len(paths)))
        local.catalog.register_many([(Path(paths[i]).name, i + 1) for i in batch])
        for name in options:
            local.indexes[name].add(
                [i + 1 for i in batch], np.stack([feats[i][name] for i in batch])
            )
    peer_rate = len(paths) / (time.perf_counter() - start)

    # Ray Data logs its progress every few seconds when stdout is not a terminal; the
    # ingest's own progress bar is enough.
    DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    report = ingest(str(folder), args, pool_size=pool_size)
    ours_rate = len(paths) / (time.perf_counter() - start)
    print(
        f"ingest {len(paths)} files: Ray Data {ours_rate:.1f}/s (pool_size={pool_size}), "
        f"joblib(n_jobs=2) {peer_rate:.1f}/s; ingest report: {report.summary()}"
    )
    assert report.stored == len(paths), "Ray Data did not store every file"
    ok = ours_rate / peer_rate >= 0.8
    label = ",".join(args.enabled)
    return [
        row(f"ingest images/s ({len(paths)} files, {label})", ours_rate, peer_rate, ">= 0.8x", ok)
    ]
