"""shards: a feature's index over 4 shards against 1, through the index client and real index
actors, on synthetic phash hashes and 1280-d embeddings: search p50 (every shard searched at
once and merged, against one actor), adds per second through the write path (catalog
included), and the memory of each shard's actor against the one actor's."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray

from bench.common import GiB, Row, ms, row
from index_actors.client import IndexClient, IndexSpec
from index_actors.placement import Placement, spread
from index_actors.reshard import RayOpener, reshard

#: Images per write-path call: an ingest batch.
BATCH = 1000


def _fill(client: IndexClient, feature: str, data: np.ndarray) -> float:
    """Store every row through the write path in batches; returns adds per second."""
    start = time.perf_counter()
    for lo in range(0, len(data), BATCH):
        hi = min(lo + BATCH, len(data))
        images: list[tuple[str | None, int | None]] = [(None, i) for i in range(lo + 1, hi + 1)]
        done = asyncio.run(client.store(images, {feature: data[lo:hi]}))
        assert all(s.ok for s in done), [s.status for s in done if not s.ok][:3]
    return len(data) / (time.perf_counter() - start)


def _rss(client: IndexClient, feature: str) -> list[float]:
    """Resident memory (GiB) of each shard's actor process."""
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    pids = ray.get([a.pid.remote() for a in client.shards[feature]])
    return [psutil.Process(p).memory_info().rss / GiB for p in pids]


def _one_kind(
    feature: str, spec: IndexSpec, data: np.ndarray, queries: np.ndarray, searches: int, tmp: Path
) -> list[Row]:
    n = len(data)
    clients: dict[int, IndexClient] = {}
    names: dict[int, str] = {}
    rates: dict[int, float] = {}
    try:
        for count in (1, 4):
            name = f"bench{uuid.uuid4().hex[:8]}"
            sharded = IndexSpec(spec.kind, spec.dim, spec.options, count)
            # No snapshots while filling: serialising a 5 GB index doubles its memory.
            clients[count] = IndexClient.open(
                name, str(tmp / name), {feature: sharded}, snapshot_interval_s=3600
            )
            names[count] = name
            rates[count] = _fill(clients[count], feature, data)
            print(f"shards: {feature} x{count}: {n} added, {rates[count]:.0f}/s", flush=True)
        # Same answers both ways, then interleaved timings.
        one, four = clients[1], clients[4]
        for q in queries[:5]:
            assert asyncio.run(one.search(feature, q, 20)) == asyncio.run(
                four.search(feature, q, 20)
            )
        took: dict[int, list[float]] = {1: [], 4: []}

        async def timed(client: IndexClient, query: Any) -> float:
            t0 = time.perf_counter()
            await client.search(feature, query, 20)
            return time.perf_counter() - t0

        for i in range(searches):
            q = queries[i % len(queries)]
            for count in (1, 4) if i % 2 else (4, 1):
                took[count].append(asyncio.run(timed(clients[count], q)))
        rss = {count: _rss(c, feature) for count, c in clients.items()}
        four = clients.pop(4)  # its memory, for the reshard's new shards
        for actor in [four.catalog, *four.shards[feature]]:
            ray.kill(actor, no_restart=True)
        moved = _reshard(names[1], tmp / names[1], feature, spec, clients[1].catalog)
    finally:
        for c in clients.values():
            for actor in [c.catalog, *c.shards[feature]]:
                ray.kill(actor, no_restart=True)  # detached: they would outlive the section
    p50 = {count: ms(took[count], 50) for count in took}
    print(
        f"shards: {feature} at {n}: p50 {p50[4]:.2f} ms (4 shards) vs {p50[1]:.2f} ms (1); "
        f"adds {rates[4]:.0f}/s vs {rates[1]:.0f}/s; RSS per shard "
        f"{', '.join(f'{r:.2f}' for r in rss[4])} GiB vs {rss[1][0]:.2f} GiB"
    )
    return [
        row(
            f"{feature} search p50 ms, 4 shards vs 1 @{n}",
            p50[4],
            p50[1],
            "<= 1.3x",
            p50[4] / p50[1] <= 1.3,
        ),
        row(
            f"{feature} search p95 ms, 4 shards vs 1",
            ms(took[4], 95),
            ms(took[1], 95),
            "info",
            None,
        ),
        row(f"{feature} adds/s, 4 shards vs 1", rates[4], rates[1], "info", None),
        row(f"{feature} largest shard GiB vs one actor", max(rss[4]), rss[1][0], "info", None),
        row(f"{feature} all shards GiB vs one actor", sum(rss[4]), rss[1][0], "info", None),
        row(f"{feature} reshard 1 -> 4, s per million images", moved * 1e6 / n, None, "info", None),
    ]


def _reshard(app: str, data_dir: Path, feature: str, spec: IndexSpec, catalog: Any) -> float:
    """Seconds to reshard the one-shard app's feature to 4 shards through its actors
    (``scripts/reshard.py``'s way, the app stopped)."""
    opener = RayOpener(app, str(data_dir), feature, spec, Placement())
    start = time.perf_counter()
    done = asyncio.run(reshard(catalog, opener, data_dir, feature, spread(4, [])))
    took = time.perf_counter() - start
    print(f"shards: {feature}: resharded {done['moved']} images 1 -> 4 in {took:.1f} s", flush=True)
    return took


def _fanout(tmp: Path, searches: int) -> list[Row]:
    """What each shard adds to a search beside its own work: p50 over 16 near-empty phash
    shards against 1 (1000 hashes in all), per extra shard."""
    data = np.random.default_rng(1).integers(0, 256, (1000, 72), dtype=np.uint8)
    p50: dict[int, float] = {}
    for count in (1, 16):
        name = f"bench{uuid.uuid4().hex[:8]}"
        spec = {"phash": IndexSpec("binary", 576, {}, count)}
        client = IndexClient.open(name, str(tmp / name), spec, snapshot_interval_s=3600)
        try:
            _fill(client, "phash", data)
            took = []
            for i in range(searches):
                start = time.perf_counter()
                asyncio.run(client.search("phash", data[i % len(data)], 20))
                took.append(time.perf_counter() - start)
            p50[count] = ms(took, 50)
        finally:
            for actor in [client.catalog, *client.shards["phash"]]:
                ray.kill(actor, no_restart=True)
    each = (p50[16] - p50[1]) / 15
    print(f"shards: fan-out p50 {p50[16]:.2f} ms over 16 shards vs {p50[1]:.2f} ms over 1")
    return [row("search fan-out ms per extra shard (16 vs 1)", each, None, "info", None)]


def _catalog(tmp: Path) -> list[Row]:
    """Images per second the catalog actor registers: in ingest batches (one call per
    1000), and one call per image (HTTP uploads, each awaited)."""
    from index_actors.client import catalog_actor

    catalog = catalog_actor(f"bench{uuid.uuid4().hex[:8]}", str(tmp / "catalog"))
    try:
        start = time.perf_counter()
        for b in range(50):
            names = [f"b{b}/{i}.jpg" for i in range(BATCH)]
            ray.get(catalog.register_many.remote([(n, None) for n in names]))
        batched = 50 * BATCH / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(2000):
            ray.get(catalog.register.remote(f"one/{i}.jpg", None))
        single = 2000 / (time.perf_counter() - start)
    finally:
        ray.kill(catalog, no_restart=True)
    print(f"shards: catalog registers {batched:.0f}/s in batches, {single:.0f}/s one by one")
    return [
        row("catalog registrations/s, batches of 1000", batched, None, "info", None),
        row("catalog registrations/s, one per call", single, None, "info", None),
    ]


def bench_shards(n_hashes: int, n_vectors: int, searches: int, tmp: Path) -> list[Row]:
    """4 shards against 1 at ``n_hashes`` phash hashes and ``n_vectors`` 1280-d vectors,
    and the catalog's registration rate."""
    catalog = _catalog(tmp) + _fanout(tmp, searches)
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (n_hashes, 72), dtype=np.uint8)
    rows = _one_kind(
        "phash",
        IndexSpec("binary", 576),
        hashes,
        hashes[rng.integers(0, n_hashes, 50)],
        searches,
        tmp,
    )
    del hashes
    vectors = rng.normal(size=(n_vectors, 1280)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, n_vectors, 50)] + 0.01
    spec = IndexSpec("vector", 1280, {"metric": "ip"})
    return catalog + rows + _one_kind("global", spec, vectors, queries, searches, tmp)
