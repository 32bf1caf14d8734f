"""The golden requests against the same app with every feature over 3 shards: each answer
equals the one recorded from the unsharded code before the refactor, so the merged results
of exact indexes are the unsharded ones, keypoint votes and text matches included.

Left out of the comparison: query expansion (``aqe_n``: each shard expands the query with
its own nearest images, so the expanded query differs from one index's) and ``/health``
(which lists each shard)."""

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
    body = request.get("json")
    fields = {**request.get("data", {}), **request.get("params", {})}
    fields.update(body if isinstance(body, dict) else {})
    return "aqe_n" in fields or request["path"] == "/health"


def test_sharded_answers_match_the_unsharded_recording(
    app: RunningApp, payloads: dict[str, bytes]
) -> None:
    differ = differences(replay(app, payloads), skip=_not_comparable)
    assert not differ, f"{len(differ)} answers differ:\n" + "\n".join(differ)
    indexes = httpx.get(f"{app.url}/health", timeout=60).json()["indexes"]
    assert all(len(indexes[f]["shards"]) == 3 for f in ("phash", "global", "local", "ocr"))
    assert sum(s["count"] for s in indexes["phash"]["shards"]) == indexes["phash"]["count"]
