"""ingest: images/s of the default app (``serve run configs/serve.yaml``, bench/served.py)
taking photos in, both ways a user has: ``POST /images`` (4 uploads at a time, as a script or
the page sends them) and ``make ingest`` (scripts/ingest.py: Ray Data, its start-up
included), at ``--ingest-sizes`` files each; against the in-process cost of the same
extractors (every available default feature, tags on global's pass as the app computes them)
on the same files and cores: two worker processes, models loaded, nothing stored.

The files are the 1600-px photos and variants of them (bench/latency.py's ``item``), the
same contents under new names for each way in, so that each is a new image to the app.
When the timed runs would take the descriptor index past ``train_at``, it is trained first
(``trained_first``), so that its one-time training weighs on neither way in.
Targets (issue 15): HTTP at least 0.85x the in-process rate; Ray Data at least the HTTP rate
from 40 files up.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.common import ROOT, Row, row
from bench.latency import item
from bench.served import serve_default

#: Uploads in flight over HTTP.
HTTP_CONCURRENCY = 4
#: A worker's extractors (feature -> loaded extractor) and riders (``_start_worker``).
_worker: dict[str, Any] = {}


def _start_worker(options: dict[str, dict[str, Any]]) -> None:
    """Build and load the extractors in a peer worker (models load once, before timing),
    each on one thread: two workers, two cores, as joblib's ``n_jobs=2``."""
    import cv2

    from extractors import build_extractor
    from extractors.group import share_networks

    cv2.setNumThreads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # Tesseract's own threads, as Ray's workers have
    options = {n: {**o, "threads": 1} if "threads" in o else o for n, o in options.items()}

    extractors = {n: build_extractor(n, o) for n, o in options.items()}
    _worker["riders"] = share_networks(extractors)
    for ex in extractors.values():
        ex.load()
    _worker["extractors"] = extractors


def _extract_all(data: bytes) -> dict[str, float]:
    """Every feature of one upload, as an add computes them (``extractors.group.run``);
    returns the seconds each feature took on its own (a rider's inside its source's)."""
    from extractors.group import run

    extractors, riders = _worker["extractors"], _worker["riders"]
    spent: dict[str, float] = {}
    for name in extractors:
        if name in riders:
            continue
        wanted = [name, *(r for r, s in riders.items() if s == name)]
        start = time.perf_counter()
        got = run(extractors, riders, [(data, False, n) for n in wanted])
        spent[name] = time.perf_counter() - start
        assert all(not isinstance(g, Exception) for g in got), got
    return spent


def in_process(options: dict[str, dict[str, Any]], blobs: list[bytes]) -> tuple[float, dict]:
    """Images/s of the extractors over ``blobs`` on two worker processes, and the mean
    seconds per image of each feature."""
    with ProcessPoolExecutor(2, initializer=_start_worker, initargs=(options,)) as pool:
        list(pool.map(_extract_all, blobs[:2]))  # both workers started and warm
        start = time.perf_counter()
        spent = list(pool.map(_extract_all, blobs))
        rate = len(blobs) / (time.perf_counter() - start)
    per = {n: sum(s[n] for s in spent) / len(spent) for n in spent[0]}
    return rate, per


def over_http(url: str, files: list[tuple[str, bytes]]) -> float:
    """Images/s of ``POST /images`` of ``files``, ``HTTP_CONCURRENCY`` at a time."""
    with httpx.Client(base_url=url, timeout=600) as client:

        def add(file: tuple[str, bytes]) -> None:
            r = client.post("/images", files={"image": file})
            assert r.status_code == 200, r.text

        start = time.perf_counter()
        with ThreadPoolExecutor(HTTP_CONCURRENCY) as threads:
            list(threads.map(add, files))
        return len(files) / (time.perf_counter() - start)


def ray_data(config: Path, folder: Path) -> tuple[float, str]:
    """Images/s of ``make ingest`` of ``folder`` into the running app (the command's wall
    time: Python, Ray's connection and Ray Data's start-up included), and its summary."""
    cmd = [sys.executable, "scripts/ingest.py", str(folder), "--config", str(config)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    files = len(list(folder.iterdir()))
    return files / seconds, done.stdout.strip().splitlines()[0]


def trained_first(app: Any, args: Any, sizes: list[int], tmp: Path, photos: dict) -> None:
    """When the timed runs would take the descriptor index past ``train_at``, store enough
    images first (``make ingest``, untimed) and wait for its training: it takes ~20 CPU-s
    once, and in a timed run it would weigh on whichever way in crossed it. A collection
    that outgrew a few hundred photos is trained, so the rates stay the ones a user sees."""
    spec = args.index_specs().get("local")
    train_at = spec.options.get("train_at") if spec is not None else None
    per_image = int(args.extractor_options("local").get("max_keypoints", 200))
    if not train_at or 2 * sum(sizes) * per_image < train_at:
        return

    def local() -> dict[str, Any]:
        index: dict[str, Any] = httpx.get(f"{app.url}/health", timeout=60).json()["indexes"]
        return index["local"]

    start, count = time.perf_counter(), 0
    # Batches until it trains: some images have fewer keypoints than the most.
    wanted = -(-int(train_at) // per_image)
    while not ((state := local()).get("trained") or state.get("training")):
        if count > 3 * wanted:
            raise RuntimeError(f"the descriptor index did not train after {count} images")
        folder = tmp / f"trained-first-{count}"
        folder.mkdir()
        for i in range(count, count + (wanted if count == 0 else 20)):
            name, data = item(photos, i)
            (folder / f"first_{name}").write_bytes(data)
        count += len(list(folder.iterdir()))
        ray_data(app.config, folder)
    deadline = time.monotonic() + 600
    while local().get("training"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the descriptor index still trains: {local()}")
        time.sleep(2)
    print(
        f"ingest: {count} images stored first (make ingest, untimed) and the descriptor "
        f"index trained in {time.perf_counter() - start:.0f} s, so that no timed run "
        f"crosses train_at ({train_at})"
    )


def bench_ingest(photos: dict[str, bytes], sizes: list[int], tmp: Path) -> list[Row]:
    """HTTP and Ray Data ingest into the default app against the in-process extractors."""
    from deployments.config import load_app_args

    photos = {k: v for k, v in photos.items() if max(Image.open(io.BytesIO(v)).size) >= 1600}
    files = [item(photos, i) for i in range(max(sizes))]
    rows: list[Row] = []

    def by_cost(cost: tuple[str, float]) -> float:
        return -cost[1]

    with serve_default(tmp / "ingest-app") as app:
        health = httpx.get(f"{app.url}/health", timeout=60).json()
        args = load_app_args(app.config, "imgsearch")
        features = [n for n, e in health["extractors"].items() if e.get("available")]
        print(f"ingest: default app ready in {app.ready_s:.0f} s; features {features}")
        options = {n: args.extractor_options(n) for n in features}
        peer, per = in_process(options, [data for _, data in files])
        costs = ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in sorted(per.items(), key=by_cost))
        print(
            f"ingest: in process, 2 workers, {len(files)} files: {peer:.2f} images/s; per "
            f"image in one of them: {costs}"
        )
        if "local" in features:
            trained_first(app, args, sizes, tmp, photos)
        for size in sizes:
            named = [(f"http{size}_{name}", data) for name, data in files[:size]]
            http_rate = over_http(app.url, named)
            folder = tmp / f"ray{size}"
            folder.mkdir()
            for name, data in files[:size]:
                (folder / f"ray{size}_{name}").write_bytes(data)
            ray_rate, summary = ray_data(app.config, folder)
            print(
                f"ingest {size} files: HTTP {http_rate:.2f}/s ({http_rate / peer:.2f}x in "
                f"process), make ingest {ray_rate:.2f}/s ({ray_rate / http_rate:.2f}x HTTP): "
                f"{summary}"
            )
            rows.append(
                row(
                    f"ingest HTTP images/s, {size} files (peer in process)",
                    http_rate,
                    peer,
                    ">= 0.85x",
                    http_rate / peer >= 0.85,
                )
            )
            rows.append(
                row(
                    f"ingest make ingest images/s, {size} files (peer HTTP)",
                    ray_rate,
                    http_rate,
                    ">= 1x",
                    ray_rate >= http_rate,
                )
            )
        counts = httpx.get(f"{app.url}/health", timeout=60).json()
        stored = {n: i.get("count") for n, i in counts.get("indexes", {}).items()}
        print(f"ingest: index counts after: {json.dumps(stored)}")
    return rows
