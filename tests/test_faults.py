"""Faults under one app: index actors killed mid-run lose no acknowledged add, and concurrent
writes of one image end in one version (whole-app restarts: tests/test_restarts.py)."""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import RunningApp
from tests.helpers import distinct_uploads, one_upload, reencode

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    """No periodic snapshot: a restarted index actor must rebuild from LMDB alone."""
    return {"snapshot_interval_s": 3600}


def _variants(photos: dict[str, bytes], n: int) -> list[bytes]:
    """n distinct images made from the test photos (scaled and recompressed)."""
    base = list(photos.values())
    return [reencode(base[i % len(base)], scale=0.25 + 0.01 * (i // len(base))) for i in range(n)]


def _all_findable(c: httpx.Client, ids: dict[int, bytes]) -> None:
    for image_id, data in ids.items():
        got = c.get(f"/images/{image_id}")
        assert got.status_code == 200 and got.json()["features"] == ["phash", "color"], got.text
        hits = c.post("/search/image", files={"image": ("q.jpg", data)}, data={"k": 10}).json()
        exact = [
            r["image_id"]
            for r in hits["results"]
            if r["matches"].get("phash", {}).get("distance") == 0
        ]
        assert image_id in exact


def test_killed_index_actor_comes_back_with_every_acknowledged_add(
    app: RunningApp, photos: dict[str, bytes]
) -> None:
    c = httpx.Client(base_url=app.url, timeout=120)
    images = _variants(photos, 24)
    acked: dict[int, bytes] = {}
    errors: list[str] = []

    def writer() -> None:
        for i, data in enumerate(images, start=1):
            r = c.post("/images", files={"image": (f"{i}.jpg", data)}, data={"image_id": i})
            if r.status_code == 200:
                acked[i] = data
            else:
                errors.append(r.text)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 120
    while len(acked) < 6 and not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    import ray

    pid = ray.get(app.actor("index:phash").pid.remote())
    os.kill(pid, signal.SIGKILL)  # a crash, not a polite shutdown
    thread.join()
    # The in-flight call is retried on the restarted actor: no add fails, none is lost.
    assert errors == [] and len(acked) == len(images)
    # The actor restarted (a new process) and rebuilt itself from LMDB.
    assert ray.get(app.actor("index:phash").pid.remote()) != pid
    _all_findable(c, acked)


def _rows(app: RunningApp, feature: str) -> dict[int, bytes]:
    """Every stored row of one feature's index actor: id -> bytes."""
    import ray

    ids, rows = ray.get(app.actor(f"index:{feature}").export.remote(-1, 10**6))
    return {i: bytes(r) for i, r in zip(ids, rows, strict=True)}


def test_concurrent_writes_of_one_image_end_in_one_upload(
    app: RunningApp, photos: dict[str, bytes]
) -> None:
    """20 re-adds of one id with different photos at once over HTTP, then re-adds and
    deletes mixed: the image ends with every feature from one upload, or in no index."""
    c = httpx.Client(base_url=app.url, timeout=120)
    uploads = distinct_uploads(photos, 20)
    refs = [5000 + j for j in range(len(uploads))]

    def add(image_id: int, data: bytes) -> int:
        files = {"image": (f"{image_id}.jpg", data)}
        return c.post("/images", files=files, data={"image_id": image_id}).status_code

    assert [add(r, d) for r, d in zip(refs, uploads, strict=True)] == [200] * len(refs)
    with ThreadPoolExecutor(len(uploads)) as pool:
        codes = list(pool.map(lambda d: add(4000, d), uploads))
    assert codes == [200] * len(uploads)
    rows = {f: _rows(app, f) for f in ("phash", "color")}
    assert one_upload(rows, 4000, refs), "features of one id from different uploads"

    def write(k: int) -> int:
        return c.delete("/images/4001").status_code if k % 2 else add(4001, uploads[k])

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(write, range(10)))
    assert set(codes) <= {200, 404}, codes
    rows = {f: _rows(app, f) for f in ("phash", "color")}
    if c.get("/images/4001").status_code == 200:
        assert one_upload(rows, 4001, refs)
    else:
        assert all(4001 not in by_id for by_id in rows.values())
