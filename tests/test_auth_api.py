"""API keys through the real graph (Serve, HAProxy, the ingress replica): 401 without a key,
403 for a read key on a write route, both headers, the key file re-read inside the replica.
The rules themselves are tested without Ray in test_auth.py."""

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningApp

pytestmark = pytest.mark.timeout(300)

READ_KEY, WRITE_KEY, LATER_KEY = "r-7f3c9a", "w-51d2e8", "r-later-0b4e"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# the test's keys\nread:{READ_KEY}\nwrite:{WRITE_KEY}\n")
    return path


@pytest.fixture(scope="module")
def app_overrides(key_file: Path) -> dict[str, object]:
    """phash only (the keys are the subject), keys from a file."""
    return {"features": {"phash": {}}, "api_keys_file": str(key_file)}


def test_a_deployed_app_checks_keys_on_every_request(
    app: RunningApp, key_file: Path, photos: dict[str, bytes]
) -> None:
    from deployments.ingress import serve_http_host

    # What build_app checks keys against: the running Serve's host (the tests' loopback).
    assert serve_http_host() == "127.0.0.1"
    name, data = next(iter(photos.items()))
    upload = {"image": (name, data, "image/jpeg")}
    with httpx.Client(base_url=app.url, timeout=60) as c:
        assert c.get("/health").json() == {"status": "up"}
        full = c.get("/health", headers={"X-API-Key": READ_KEY}).json()
        assert "extractors" in full or len(full) > 1, full
        r = c.post("/images", files=upload)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        find = {"file_name": name}
        r = c.get("/images", params=find, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        r = c.post("/images", files=upload, headers={"Authorization": f"Bearer {READ_KEY}"})
        assert r.status_code == 403, r.text
        assert c.get("/images", params=find, headers={"X-API-Key": READ_KEY}).status_code == 404
        r = c.post("/images", files=upload, headers={"X-API-Key": WRITE_KEY})
        assert r.status_code == 200, r.text
        r = c.post("/search/image", files=upload, headers={"X-API-Key": READ_KEY})
        assert r.status_code == 200 and r.json()["results"][0]["file_name"] == name

        # A key added to the file works without a restart; one removed stops working.
        key_file.write_text(f"read:{LATER_KEY}\nwrite:{WRITE_KEY}\n")
        deadline = time.monotonic() + 30
        while c.get("/images", params=find, headers={"X-API-Key": LATER_KEY}).status_code != 200:
            assert time.monotonic() < deadline, "the edited key file was not re-read"
            time.sleep(0.5)
        assert c.get("/images", params=find, headers={"X-API-Key": READ_KEY}).status_code == 401
