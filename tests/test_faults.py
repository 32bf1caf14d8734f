"""Faults: index actors killed mid-run and whole-app restarts lose no acknowledged add."""

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.conftest import RunningApp, deploy, kill_actors
from tests.helpers import reencode

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


def test_whole_app_restart_keeps_everything(
    ray_session: int, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    name = f"r{uuid.uuid4().hex[:8]}"
    first = deploy(name, tmp_path, ray_session, snapshot_interval_s=3600)
    c = httpx.Client(base_url=first.url, timeout=120)
    images = dict(enumerate(_variants(photos, 10), start=1))
    for i, data in images.items():
        assert (
            c.post("/images", files={"image": (f"{i}.jpg", data)}, data={"image_id": i}).status_code
            == 200
        )
    # Everything down, hard: the app and its detached actors (no chance to snapshot).
    serve.delete("test")
    kill_actors(name)
    second = deploy(name, tmp_path, ray_session)
    try:
        c = httpx.Client(base_url=second.url, timeout=120)
        assert c.get("/health").json()["images"] == len(images)
        _all_findable(c, images)
    finally:
        serve.delete("test")
        kill_actors(name)


def test_redeploy_on_another_data_dir_does_not_reuse_the_old_actors(
    ray_session: int, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """The detached actors outlive the app; a config change must still take effect."""
    name = f"m{uuid.uuid4().hex[:8]}"
    images = dict(enumerate(_variants(photos, 2), start=1))
    try:
        c = httpx.Client(base_url=deploy(name, tmp_path / "a", ray_session).url, timeout=120)
        for i, data in images.items():
            c.post("/images", files={"image": (f"{i}.jpg", data)}, data={"image_id": i})
        serve.delete("test")  # the actors stay up
        c = httpx.Client(base_url=deploy(name, tmp_path / "b", ray_session).url, timeout=120)
        health = c.get("/health").json()
        assert health["images"] == 0 and health["indexes"]["phash"]["count"] == 0
        serve.delete("test")
        c = httpx.Client(base_url=deploy(name, tmp_path / "a", ray_session).url, timeout=120)
        _all_findable(c, images)
        # An index that is gone for good: a 503 that says so, not a bare 500.
        import ray

        ray.kill(ray.get_actor(f"{name}:index:color", namespace="serve"), no_restart=True)
        r = c.post("/search/image", files={"image": ("q.jpg", images[1])})
        assert r.status_code == 503 and "retry" in r.json()["detail"]
        r = c.post("/images", files={"image": ("q.jpg", images[1])}, data={"image_id": 1})
        assert r.status_code == 503
        health = c.get("/health").json()
        assert health["status"] == "degraded" and "error" in health["indexes"]["color"]
    finally:
        serve.delete("test")
        kill_actors(name)
