"""The golden requests against the same app with every feature over 3 shards: each answer
equals the one recorded from the unsharded code before the refactor, so the merged results
of exact indexes are the unsharded ones, keypoint votes and text matches included.

Query expansion (``aqe_n``) included: it expands with the nearest images of all shards.
Left out of the comparison: ``/health`` (which lists each shard)."""

from typing import Any

import httpx
import pytest

from tests.conftest import RunningApp
from tests.test_golden import differences, golden_settings, payloads, replay

__all__ = ["payloads"]  # the fixture, used by name


@pytest.fixture(scope="module")
def app_overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The golden app, every feature's index over 3 shards."""
    return {**golden_settings(tmp_path_factory), "shards": 3}


def _not_comparable(request: dict[str, Any]) -> bool:
    return bool(request["path"] == "/health")


def test_sharded_answers_match_the_unsharded_recording_then_a_shard_goes_down(
    app: RunningApp, payloads: dict[str, bytes]
) -> None:
    """One story, as its second part needs the first's images: the recorded answers, then
    one colour shard dies for good: searches answer from the other two and name it under
    ``partial``, /health is degraded and names it, adds it owns answer 503 "retry" and leave
    nothing behind, every other request goes on."""
    import ray

    differ = differences(replay(app, payloads), skip=_not_comparable)
    assert not differ, f"{len(differ)} answers differ:\n" + "\n".join(differ)
    indexes = httpx.get(f"{app.url}/health", timeout=60).json()["indexes"]
    assert all(len(indexes[f]["shards"]) == 3 for f in ("phash", "global", "local", "ocr"))
    assert sum(s["count"] for s in indexes["phash"]["shards"]) == indexes["phash"]["count"]

    from index_actors import shards

    ray.kill(app.actor("index:color:1/3"), no_restart=True)
    query = {"image": ("q.jpg", payloads["bridge_half"])}
    with httpx.Client(base_url=app.url, timeout=120) as client:
        r = client.post("/search/image", files=query, data={"k": 50})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["partial"] == {"color": ["index:color:1/3"]}
        assert {h["image_id"] for h in body["by_feature"]["color"]}.isdisjoint(
            {
                h["image_id"]
                for h in body["by_feature"]["phash"]
                if shards.owner(h["image_id"], 3) == 1
            }
        )
        whole = client.post("/search/image", files=query, data={"features": "phash"}).json()
        assert "partial" not in whole
        anchor = next(i for i in range(1, 9) if shards.owner(i, 3) != 1)  # its owner is up
        r = client.get(f"/search/similar/{anchor}", params={"feature": "color", "k": 50})
        assert r.status_code == 200 and r.json()["partial"] == ["index:color:1/3"], r.text
        assert "partial" not in client.get("/search/similar/1", params={"k": 5}).json()
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "shard 1/3" in health["indexes"]["color"]["error"]

        ids = range(5000, 5100)
        mine = next(i for i in ids if shards.owner(i, 3) == 1)
        other = next(i for i in ids if shards.owner(i, 3) != 1)
        upload = {"image": ("w.jpg", payloads["wine_mirror"])}
        r = client.post("/images", files=upload, data={"image_id": mine})
        assert r.status_code == 503 and "retry" in r.json()["detail"], r.text
        assert client.get(f"/images/{mine}").status_code == 404
        r = client.post("/images", files=upload, data={"image_id": other})
        assert r.status_code == 200 and r.json()["features"]["color"] == "ok", r.text
