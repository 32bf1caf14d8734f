"""The soak script's 60-second version (scripts/soak.py; its 10-minute run is a closing
note's): mixed load on the deployed app, then every image it says exists is whole and found,
and no deleted one is."""

import pytest

from scripts.soak import Soak, report, run
from tests.conftest import RunningApp

pytestmark = pytest.mark.timeout(600)


def test_a_minute_of_mixed_load_leaves_the_app_consistent(
    app: RunningApp, photos: dict[str, bytes]
) -> None:
    soak = Soak(app.url, list(photos.values()), {})
    rss = run(soak, seconds=60, step_s=10, max_workers=8)
    problems = soak.crashes + soak.check()
    print(report(soak, rss, problems))
    assert problems == []
    by_status = {status for _, status in soak.statuses}
    assert not {s for s in by_status if s == 0 or (s >= 500 and s != 503)}, soak.statuses
    routes = {route for route, _ in soak.statuses}
    assert {"POST /images (new)", "POST /images (re-add)", "POST /search/image"} <= routes
    bad = {s for (route, s) in soak.statuses if route == "POST /images (bad upload)"}
    assert bad and all(400 <= s < 500 for s in bad), bad
    assert soak.stored and soak.features == ["color", "phash"]
