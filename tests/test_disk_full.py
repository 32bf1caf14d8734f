"""A full disk under ``data_dir`` (a small tmpfs): adds answer 507 with the reason, nothing
stored before is damaged or half visible, and adds work again once space is freed."""

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningApp, deploy, kill_actors
from tests.helpers import distinct_uploads

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def full_app(ray_session: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """phash and colour on a 16 MiB tmpfs of their own (root only: mount)."""
    from ray import serve

    disk = tmp_path_factory.mktemp("disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    name = f"d{uuid.uuid4().hex[:8]}"
    try:
        yield deploy(name, disk / "data", ray_session)
    finally:
        with contextlib.suppress(Exception):
            serve.delete("test")
        kill_actors(name)
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_answers_507_and_damages_nothing(
    full_app: RunningApp, photos: dict[str, bytes]
) -> None:
    uploads = distinct_uploads(photos, 24)
    disk = full_app.data_dir.parent
    with httpx.Client(base_url=full_app.url, timeout=120) as c:

        def add(i: int) -> httpx.Response:
            files = {"image": (f"{i}.jpg", uploads[i])}
            return c.post("/images", files=files, data={"image_id": i + 1})

        assert [add(i).status_code for i in range(3)] == [200] * 3
        free = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize))
        refused = None
        for i in range(3, len(uploads)):
            r = add(i)
            if r.status_code != 200:
                refused = i
                break
        assert refused is not None, "every add went in on a full disk"
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"] and "No space left" in r.json()["detail"]
        # What was stored is whole: every known image has both features, and is found.
        health = c.get("/health").json()
        counts = {f: health["indexes"][f]["count"] for f in ("phash", "color")}
        assert set(counts.values()) == {health["images"]} and health["images"] == refused
        assert c.get(f"/images/{refused + 1}").status_code == 404
        for i in range(refused):
            assert c.get(f"/images/{i + 1}").json()["features"] == ["phash", "color"]
            query = {"image": ("q.jpg", uploads[i])}
            hits = c.post("/search/image", files=query, data={"k": 3}).json()["results"]
            exact = [h["image_id"] for h in hits if h["matches"]["phash"]["distance"] == 0]
            assert i + 1 in exact, hits
        (disk / "filler").unlink()
        assert add(refused).status_code == 200
        assert c.get("/health").json()["images"] == refused + 1
