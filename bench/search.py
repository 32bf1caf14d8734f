"""search: p50/p95 latency of a k=20 phash search through a real index actor (the index
client's ``index_actor``, one Ray call per search) against raw FAISS ``IndexBinaryFlat`` in
this process, both single-threaded, at ``--n-hashes`` stored hashes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import faiss
import numpy as np
import ray

from bench.common import Row, ms, row
from index_actors.client import index_actor


def bench_search(query: np.ndarray, n: int, searches: int, tmp: Path) -> list[Row]:
    """p50/p95 of a k=20 phash search through a real IndexActor against raw FAISS."""
    data = np.random.default_rng(0).integers(0, 256, (n, 72), dtype=np.uint8)
    actor = index_actor(f"bench{uuid.uuid4().hex[:8]}", "phash", "binary", str(tmp), 576)
    chunk = 100_000
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        ray.get(actor.add.remote(list(range(lo + 1, hi + 1)), data[lo:hi]))
        print(f"search: added {hi}/{n} through the actor", flush=True)
    add_rate = n / (time.perf_counter() - start)

    flat = faiss.IndexBinaryFlat(576)
    flat.add(data)
    # Ray runs a num_cpus=0 actor with OMP_NUM_THREADS=1, so FAISS in the actor has one
    # thread; the peer gets the same, or the ratio would measure threads, not the actor.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        # Same answer both ways (best distance over the two variants), then warm-up.
        hits = ray.get(actor.search.remote(query, 20))
        dist, _ = flat.search(query, 20)
        assert hits[0][1] == dist.min(), (hits[0], dist.min())
        ours: list[float] = []
        peer: list[float] = []
        for _ in range(searches):
            t0 = time.perf_counter()
            ray.get(actor.search.remote(query, 20))
            t1 = time.perf_counter()
            flat.search(query, 20)
            t2 = time.perf_counter()
            ours.append(t1 - t0)
            peer.append(t2 - t1)
    finally:
        faiss.omp_set_num_threads(threads)
        ray.kill(actor, no_restart=True)  # detached: it would outlive this section
    p50, peer50 = ms(ours, 50), ms(peer, 50)
    print(
        f"search at {n}: actor p50 {p50:.2f} ms p95 {ms(ours, 95):.2f} ms, "
        f"FAISS p50 {peer50:.2f} ms p95 {ms(peer, 95):.2f} ms; add {add_rate:.0f} hashes/s"
    )
    return [
        row(f"search p50 ms @{n}", p50, peer50, "<= 1.5x", p50 / peer50 <= 1.5),
        row(f"search p95 ms @{n}", ms(ours, 95), ms(peer, 95), "info", None),
        row("actor add hashes/s (100k chunks)", add_rate, None, "info", None),
    ]
