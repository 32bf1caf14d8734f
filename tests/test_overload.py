"""Overload: past the ingress's queue (configs/serve.yaml: ``max_ongoing_requests``,
``max_queued_requests``, ``backpressure_config``) a request is refused at once with 503 and
``Retry-After``, and stores nothing; a refused upload sent again later goes in."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import SERVE_YAML, RunningApp

#: A burst far over what the test's small queue holds.
BURST = 60


@pytest.fixture(scope="module")
def deployment_options() -> dict[str, dict[str, Any]]:
    """The shipped Retry-After, with a queue small enough for a test's burst to overflow."""
    return {"Ingress": {"max_ongoing_requests": 2, "max_queued_requests": 2}}


def test_the_shipped_ingress_bounds_its_queue() -> None:
    import yaml

    app = yaml.safe_load(SERVE_YAML.read_text())["applications"][0]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "Ingress"]
    assert ingress["max_queued_requests"] > 0 and ingress["max_ongoing_requests"] > 0
    assert ingress["backpressure_config"] == {"status_code": 503, "retry_after_s": 2}


def test_a_burst_past_the_queue_is_refused_with_retry_after(
    app: RunningApp, photos: dict[str, bytes]
) -> None:
    uploads = [list(photos.values())[i % len(photos)] for i in range(BURST)]

    def add(i: int, client: httpx.Client) -> httpx.Response:
        files = {"image": (f"burst-{i}.jpg", uploads[i])}
        return client.post("/images", files=files, data={"image_id": i + 1})

    with httpx.Client(base_url=app.url, timeout=120) as c, ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(lambda i: add(i, c), range(BURST)))
        codes = [r.status_code for r in answers]
        refused = [i for i, r in enumerate(answers) if r.status_code == 503]
        assert set(codes) == {200, 503}, codes
        assert all(answers[i].headers["retry-after"] == "2" for i in refused)
        # A refused upload stored nothing; every accepted one is there.
        health = c.get("/health").json()
        assert health["images"] == BURST - len(refused)
        assert all(c.get(f"/images/{i + 1}").status_code == 404 for i in refused)
        # Sent again once the burst is over, as Retry-After says, each goes in.
        assert [add(i, c).status_code for i in refused] == [200] * len(refused)
        assert c.get("/health").json()["images"] == BURST
