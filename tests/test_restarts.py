"""Whole-app restarts: the app and its detached actors killed, or redeployed on another data
directory; each test deploys its own app (the module apps of other files stay apart)."""

import uuid
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.conftest import deploy, kill_actors
from tests.test_faults import _all_findable, _variants

pytestmark = pytest.mark.timeout(600)


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
