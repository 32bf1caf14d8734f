"""Every kind of actor the app keeps state in, SIGKILLed during a stream of adds: the catalog,
a binary index (phash), a vector index (colour), the keypoint index (local features) and a
text index (OCR words). Every acknowledged add is there afterwards with every feature, and
nothing is half visible: each index holds exactly the images the catalog knows."""

import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import RunningApp
from tests.helpers import distinct_uploads

pytestmark = pytest.mark.timeout(600)
FEATURES = ["phash", "color", "local", "ocr"]
ROLES = ["catalog", "index:phash", "index:color", "index:local", "index:ocr"]
#: Adds in each stream; the kill comes after the third is acknowledged.
STREAM = 8


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    """One feature of each index kind; no periodic snapshot, so that a restarted index
    rebuilds from its LMDB store alone."""
    return {"features": {f: {} for f in FEATURES}, "snapshot_interval_s": 3600}


@pytest.mark.parametrize("role", ROLES)
def test_a_killed_actor_loses_no_acknowledged_add(
    app: RunningApp, photos: dict[str, bytes], role: str
) -> None:
    import ray

    c = httpx.Client(base_url=app.url, timeout=120)
    first = 1000 * (1 + ROLES.index(role))  # ids of its own: the tests run in any order
    uploads = dict(enumerate(distinct_uploads(photos, STREAM), start=first))
    acked: list[int] = []
    errors: list[str] = []

    def writer() -> None:
        for i, data in uploads.items():
            r = c.post("/images", files={"image": (f"{i}.jpg", data)}, data={"image_id": i})
            if r.status_code == 200 and set(r.json()["features"].values()) == {"ok"}:
                acked.append(i)
            else:
                errors.append(f"{r.status_code} {r.text}")

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 120
    while len(acked) < 3 and not errors and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = ray.get(app.actor(role).pid.remote())
    os.kill(pid, signal.SIGKILL)  # a crash, not a polite shutdown
    thread.join()
    # The call in flight is retried on the restarted actor: no add fails, none is lost.
    assert errors == [] and sorted(acked) == sorted(uploads)
    assert ray.get(app.actor(role).pid.remote()) != pid  # a new process, rebuilt from LMDB
    for i in acked:
        got = c.get(f"/images/{i}")
        assert got.status_code == 200, got.text
        assert sorted(got.json()["features"]) == sorted(FEATURES), got.text
    health = c.get("/health").json()
    counts = {f: health["indexes"][f]["count"] for f in FEATURES}
    assert set(counts.values()) == {health["images"]}, (counts, health["images"])
