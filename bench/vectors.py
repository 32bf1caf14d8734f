"""vectors: search over ``--n-vectors`` synthetic 1280-d embeddings, a trained index
(``--factory``, ``scripts/train_index.py``'s training, LMDB re-ranking) against exact Flat in
the same ``VectorIndex``: p50 latency, and recall@10 with Flat's answers as the truth."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import Row, ms, row
from index_actors.vector import VectorIndex
from scripts.train_index import train


def embeddings(n: int, dim: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Unit vectors like real embeddings: a mixture of clusters in a low-dimensional
    subspace plus noise (uniform random 1280-d vectors have no neighbours worth finding)."""
    rng = np.random.default_rng(seed)
    latent = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(
        size=(n, centers.shape[1])
    )
    basis = np.random.default_rng(12345).normal(size=(centers.shape[1], dim))
    x = latent @ basis + 2.0 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_vectors(n: int, factory: str, settings: list[tuple[int, int]], tmp: Path) -> list[Row]:
    """p50 latency and recall@10 of the trained index against exact Flat, same class."""
    dim = 1280
    centers = np.random.default_rng(7).normal(size=(2000, 64)) * 2.0
    idx = VectorIndex(tmp / "vectors", dim, metric="ip")
    chunk = 50_000
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        idx.add(list(range(lo, hi)), embeddings(hi - lo, dim, lo + 1, centers))
        print(f"vectors: stored {hi}/{n}", flush=True)
    print(f"vectors: stored in {time.perf_counter() - start:.0f} s")
    queries = embeddings(100, dim, 999_999, centers)
    truth = [{i for i, _ in idx.search(q, k=10)} for q in queries]
    flat_lat = []
    for q in queries[:30]:
        t0 = time.perf_counter()
        idx.search(q, k=10)
        flat_lat.append(time.perf_counter() - t0)
    start = time.perf_counter()
    trained, _ = train(idx.sample(min(n, 50_000)), "ip", factory, None)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    idx.adopt(trained, None)
    fill_s = time.perf_counter() - start
    rows: list[Row] = []
    for probe, rr in settings:
        idx.configure(nprobe=probe, rerank=rr)
        lat, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            hits = idx.search(q, k=10)
            lat.append(time.perf_counter() - t0)
            found.append({i for i, _ in hits})
        recall = statistics.fmean(len(a & b) / 10 for a, b in zip(truth, found, strict=True))
        p50, flat50 = ms(lat, 50), ms(flat_lat, 50)
        print(
            f"vectors at {n}: {factory} nprobe {probe} rerank {rr}: p50 {p50:.2f} ms, "
            f"recall@10 {recall:.3f}; Flat p50 {flat50:.1f} ms; "
            f"train {train_s:.0f} s, fill {fill_s:.0f} s"
        )
        label = f"{factory} nprobe {probe} rerank {rr}"
        rows += [
            row(f"vector p50 ms @{n}, {label} vs Flat", p50, flat50, "<= 0.1x", p50 * 10 <= flat50),
            row(f"vector recall@10, {label}", recall, None, ">= 0.9", recall >= 0.9),
        ]
    rows.append(row("vector IVF-PQ train + fill s", train_s + fill_s, None, "info", None))
    idx.close()
    return rows
