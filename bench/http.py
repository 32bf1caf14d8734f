"""http: ``POST /search/image`` on the deployed app (Serve, HAProxy, ingress, extractor
deployments, index actors) over one keep-alive HTTP connection, against the same work in
this process (``LocalApp``: same extractors, indexes, fusion and names, no Ray), at
``--n-http`` stored images; p50/p95 and the p50 difference, for phash and phash,colour."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import LocalApp, Row, features, ms, row
from deployments.config import AppArgs
from index_actors.client import IndexClient


def fill(args: AppArgs, url: str, photos: dict[str, bytes], n: int, local: LocalApp) -> None:
    """The same n synthetic images in the app (via its actors) and in ``local``, plus photos."""
    rng = np.random.default_rng(1)
    ids = list(range(1, n + 1))
    names: list[tuple[str | None, int | None]] = [(f"synthetic_{i:07d}.jpg", i) for i in ids]
    feats = {
        "phash": rng.integers(0, 256, (n, 72), dtype=np.uint8),
        "color": rng.dirichlet(np.ones(512), n).astype(np.float32) * 1e7,
    }
    # Straight to the actors, through the index client's write path: 10k uploads over HTTP
    # would take minutes and test nothing here.
    client = IndexClient.connect(args.name, args.shard_counts())
    stored = asyncio.run(client.store(names, {name: feats[name] for name in args.enabled}))
    failed = [s for s in stored if not s.ok]
    assert not failed, f"{len(failed)} synthetic images not stored: {failed[0]}"
    local.catalog.register_many(names)
    for name in args.enabled:
        local.indexes[name].add(ids, feats[name])
    # And the real photos through the API, so that a query finds itself.
    with httpx.Client(base_url=url, timeout=60) as http:
        for file_name, data in photos.items():
            r = http.post("/images", files={"image": (file_name, data, "image/jpeg")})
            r.raise_for_status()
            image_id = r.json()["image_id"]
            local.catalog.register(file_name, image_id)
            for name, ex in local.extractors.items():
                local.indexes[name].add([image_id], features(ex, [data])[0][None, :])


def bench_http(
    args: AppArgs, url: str, photos: dict[str, bytes], n: int, searches: int, tmp: Path
) -> list[Row]:
    """POST /search/image over HTTP against the same work in-process, at n stored images."""
    local = LocalApp(args, tmp / "local")
    start = time.perf_counter()
    fill(args, url, photos, n, local)
    print(f"http: {n} images + {len(photos)} photos stored in {time.perf_counter() - start:.1f} s")
    items = list(photos.items())
    rows = []
    with httpx.Client(base_url=url, timeout=60) as client:  # one keep-alive connection
        for feature_list in ("phash", "phash,color"):
            names = feature_list.split(",")
            ours: list[float] = []
            peer: list[float] = []
            for i in range(searches + 5):  # the first 5 are warm-up
                file_name, data = items[i % len(items)]
                t0 = time.perf_counter()
                r = client.post(
                    "/search/image",
                    files={"image": (file_name, data, "image/jpeg")},
                    data={"features": feature_list},
                )
                t1 = time.perf_counter()
                top = local.search(data, names)
                t2 = time.perf_counter()
                r.raise_for_status()
                # Both found the photo itself first: they did the real work.
                assert r.json()["results"][0]["file_name"] == file_name == top, (file_name, top)
                if i >= 5:
                    ours.append(t1 - t0)
                    peer.append(t2 - t1)
            p50, peer50 = ms(ours, 50), ms(peer, 50)
            print(
                f"http {feature_list} @{n}: HTTP p50 {p50:.1f} ms p95 {ms(ours, 95):.1f} ms, "
                f"in-process p50 {peer50:.1f} ms p95 {ms(peer, 95):.1f} ms, "
                f"p50 difference {p50 - peer50:.1f} ms"
            )
            if feature_list == "phash":
                diff = p50 - peer50
                rows.append(row(f"http phash p50 ms @{n}", p50, peer50, "info", None))
                rows.append(row("http phash p50 difference ms", diff, None, "<= 10", diff <= 10))
                rows.append(row("http phash p95 ms", ms(ours, 95), ms(peer, 95), "info", None))
            else:
                rows.append(row(f"http {feature_list} p50 ms", p50, peer50, "info", None))
    return rows
