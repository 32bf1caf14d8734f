"""``GET /duplicates`` without Ray: the HTTP API over the real engine, extractors and indexes
in this process (the grouping itself: ``tests/test_duplicates.py``)."""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.ingress import create_app
from deployments.ports import LocalExtractor
from index_actors.client import IndexClient
from tests.helpers import reencode

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"
WINE = "Wine_by_Jakkub_Mede.jpg"
SUNSET = "sunset_by_Aitzol_Berasategi.jpg"


def _app(data_dir: Path, phash: dict[str, Any]) -> tuple[TestClient, Engine]:
    features = {"phash": {"options": phash}, "color": {}, "ocr": {}}
    args = AppArgs.model_validate({"name": "dups", "data_dir": str(data_dir), "features": features})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    engine = Engine(args, extractors, IndexClient.local(data_dir, args.index_specs()))
    return TestClient(create_app(engine, 8 * 1024 * 1024)), engine


def _close(engine: Engine) -> None:
    for actors in engine.client.shards.values():
        for actor in actors:
            with contextlib.suppress(Exception):
                actor._obj.index.close()


def _store(http: TestClient, photos: dict[str, bytes]) -> dict[str, int]:
    """Every photo, plus a half-size copy of the bridge, a mirrored copy of the wine and a
    byte-identical copy of the sunset under other names; name -> id."""
    uploads = {
        **photos,
        "bridge-small.jpg": reencode(photos[BRIDGE], 0.5),
        "wine-mirrored.jpg": reencode(photos[WINE], mirror=True, quality=90),
        "sunset-copy.jpg": photos[SUNSET],
    }
    ids = {}
    for name, data in uploads.items():
        r = http.post("/images", files={"image": (name, data)}, data={"features": "phash,color"})
        assert r.status_code == 200, r.text
        ids[name] = r.json()["image_id"]
    return ids


@pytest.fixture
def stored(tmp_path: Path, photos: dict[str, bytes]) -> Iterator[tuple[TestClient, dict[str, int]]]:
    http, engine = _app(tmp_path, {})
    yield http, _store(http, photos)
    _close(engine)


def _members(answer: dict) -> list[set[str]]:
    return [{i["file_name"] for i in g["images"]} for g in answer["groups"]]


def test_groups_of_copies_mirrored_ones_included(
    stored: tuple[TestClient, dict[str, int]],
) -> None:
    http, ids = stored
    answer = http.get("/duplicates").json()
    assert answer["feature"] == "phash" and answer["threshold"] == 64
    assert sorted(map(sorted, _members(answer))) == sorted(
        [
            sorted({BRIDGE, "bridge-small.jpg"}),
            sorted({WINE, "wine-mirrored.jpg"}),
            sorted({SUNSET, "sunset-copy.jpg"}),
        ]
    )
    assert answer["total_groups"] == 3 and answer["page"] == 1 and answer["pages"] == 1
    for group in answer["groups"]:
        (a, b, distance), members = group["pairs"][0], [i["image_id"] for i in group["images"]]
        assert a < b and [a, b] == sorted(members) and isinstance(distance, int)
    sunset = next(g for g in answer["groups"] if SUNSET in _members({"groups": [g]})[0])
    assert sunset["pairs"] == [[ids[SUNSET], ids["sunset-copy.jpg"], 0]]

    # The identical copy is within 0 bits (so is the mirrored one: mirroring flips signs in
    # the DCT, which the stored mirrored hash does too), the half-size one is not.
    exact = _members(http.get("/duplicates", params={"threshold": 0}).json())
    assert {SUNSET, "sunset-copy.jpg"} in exact and {BRIDGE, "bridge-small.jpg"} not in exact
    # Pages of one group each.
    first = http.get("/duplicates", params={"page_size": 1}).json()
    second = http.get("/duplicates", params={"page_size": 1, "page": 2}).json()
    assert first["pages"] == 3 and first["groups"] == answer["groups"][:1]
    assert second["groups"] == answer["groups"][1:2]
    past = http.get("/duplicates", params={"page_size": 1, "page": 9}).json()
    assert past["groups"] == [] and past["total_groups"] == 3

    # A deleted member leaves its group (the kept grouping is not served stale).
    assert http.delete(f"/images/{ids['bridge-small.jpg']}").status_code == 200
    assert BRIDGE not in set().union(*_members(http.get("/duplicates").json()))


def test_a_vector_feature_groups_with_its_own_threshold(
    stored: tuple[TestClient, dict[str, int]],
) -> None:
    http, _ = stored
    r = http.get("/duplicates", params={"feature": "color"})
    assert r.status_code == 422 and "give a threshold" in r.json()["detail"]
    # Colour histograms (L1 over 1e7 pixels' shares): the identical copy at 0.
    exact = http.get("/duplicates", params={"feature": "color", "threshold": 0}).json()
    assert _members(exact) == [{SUNSET, "sunset-copy.jpg"}]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 129}, "from 0 to 128"),
        ({"threshold": 1.5}, "whole number"),
        ({"threshold": -1}, "threshold"),
        ({"feature": "ocr"}, "ocr cannot group duplicates; features that can: phash, color"),
        ({"feature": "nope"}, "unknown or disabled features"),
        ({"feature": "phash,color"}, "give one feature"),
        ({"page": 0}, "page"),
        ({"page_size": 101}, "page_size"),
    ],
)
def test_bad_requests_say_why(
    tmp_path: Path, params: dict[str, Any], message: str, photos: dict[str, bytes]
) -> None:
    http, engine = _app(tmp_path, {})
    try:
        r = http.get("/duplicates", params=params)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    finally:
        _close(engine)


def test_mirrored_copies_need_the_stored_mirrored_hash(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """Stored without the mirrored hash (as before it was kept), a mirrored copy is found
    by nothing: the mirrored hash cannot be derived from the stored one."""
    http, engine = _app(tmp_path, {"mirror": False})
    try:
        _store(http, photos)
        members = _members(http.get("/duplicates").json())
        assert {BRIDGE, "bridge-small.jpg"} in members
        assert not any(WINE in m for m in members)
    finally:
        _close(engine)
