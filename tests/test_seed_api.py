"""The seed-compatible routes: same paths, fields and response shapes as the old services."""

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import RunningApp
from tests.helpers import encode, photo_id, reencode

pytestmark = pytest.mark.timeout(300)

WINE = "Wine_by_Jakkub_Mede.jpg"


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    """Query features through the extractor deployments here (the other modules compute the
    light ones in the ingress), so that both query paths run against the real graph."""
    off = {"query_in_ingress": False}
    return {"features": {"phash": off, "color": off}}


@pytest.fixture(scope="module")
def client(app: RunningApp, photos: dict[str, bytes]) -> httpx.Client:
    """A client of an app filled through the seed gateway route, ids 1..n in name order."""
    c = httpx.Client(base_url=app.url, timeout=60)
    for i, (name, data) in enumerate(sorted(photos.items()), start=1):
        r = c.post(
            "/calculate_all_image_features",
            files={"image": (name, data)},
            data={"image_id": str(i)},
        )
        assert r.status_code == 200, r.text
        assert r.json() == [{"status": "fulfilled", "value": ""}] * 2
    return c


def test_by_image_buffer_k_and_threshold(client: httpx.Client, photos: dict[str, bytes]) -> None:
    want = photo_id(photos, WINE)
    mirrored = reencode(photos[WINE], mirror=True)
    r = client.post(
        "/phash_get_similar_images_by_image_buffer",
        files={"image": ("q.jpg", mirrored)},
        data={"k": "3"},
    )
    body = r.json()
    assert r.status_code == 200 and len(body) == 3
    assert body[0]["image_id"] == want and isinstance(body[0]["distance"], float | int)
    assert set(body[0]) >= {"image_id", "distance"}
    r = client.post(
        "/phash_get_similar_images_by_image_buffer",
        files={"image": ("q.jpg", photos[WINE])},
        data={"distance_threshold": "64"},
    )
    assert [h["image_id"] for h in r.json()] == [want]
    r = client.post(
        "/color_get_similar_images_by_image_buffer",
        files={"image": ("q.jpg", photos[WINE])},
        data={"k": 2},
    )
    # The seed routes carry no file name: an image is named by its id.
    assert r.json()[0] == {"image_id": want, "file_name": str(want), "distance": 0.0}
    both = client.post(
        "/color_get_similar_images_by_image_buffer",
        files={"image": ("q.jpg", photos[WINE])},
        data={"k": 2, "distance_threshold": 5},
    )
    assert both.status_code == 422


def test_by_id_json_body(client: httpx.Client, photos: dict[str, bytes]) -> None:
    want = photo_id(photos, WINE)
    r = client.post("/phash_get_similar_images_by_id", json={"image_id": want, "k": 3})
    # As the originals: searched by the stored hash, the image itself first, counted in k.
    assert r.status_code == 200 and len(r.json()) == 3, r.text
    assert r.json()[0]["image_id"] == want and r.json()[0]["distance"] == 0
    r = client.post(
        "/color_get_similar_images_by_id", json={"image_id": want, "distance_threshold": 1e9}
    )
    assert len(r.json()) == len(photos)
    assert (
        client.post("/phash_get_similar_images_by_id", json={"image_id": 999, "k": 3}).status_code
        == 404
    )
    assert client.post("/phash_get_similar_images_by_id", json={"k": 3}).status_code == 422
    assert (
        client.post("/global_features_get_similar_images_by_id", json={"image_id": 1}).status_code
        == 404
    )


def test_calculate_and_delete_one_feature(client: httpx.Client, photos: dict[str, bytes]) -> None:
    small = reencode(photos[WINE], scale=0.3)
    r = client.post(
        "/calculate_phash_features", files={"image": ("s.jpg", small)}, data={"image_id": "700"}
    )
    assert r.status_code == 200 and r.content == b""
    assert client.get("/images/700").json()["features"] == ["phash"]
    assert client.post("/delete_color_features", json={"image_id": 700}).status_code == 404
    assert client.post("/delete_phash_features", json={"file_name": "700"}).status_code == 200
    assert client.get("/images/700").json()["features"] == []
    assert client.post("/delete_phash_features", json={"image_id": 700}).status_code == 404
    assert (
        client.post("/delete_all_image_features", json={"image_id": 700}).json()
        == [{"status": "fulfilled"}] * 2
    )
    assert client.get("/images/700").status_code == 404
    assert client.post("/delete_all_image_features", json={"image_id": 700}).status_code == 404
    bad = client.post(
        "/calculate_phash_features", files={"image": ("s.jpg", b"nope")}, data={"image_id": "701"}
    )
    assert bad.status_code == 415 and client.get("/images/701").status_code == 404
    assert (
        client.post("/calculate_phash_features", files={"image": ("s.jpg", small)}).status_code
        == 422
    )


def test_seed_calculate_keeps_an_existing_name(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    small = reencode(photos[WINE], scale=0.3)
    r = client.post("/images", files={"image": ("named.jpg", small)}, data={"image_id": 800})
    assert r.json()["file_name"] == "named.jpg"
    r = client.post(
        "/calculate_color_features", files={"image": ("d", small)}, data={"image_id": 800}
    )
    assert r.status_code == 200
    assert client.get("/images/800").json()["file_name"] == "named.jpg"
    assert client.post("/delete_all_image_features", json={"image_id": 800}).status_code == 200


def test_reverse_search_and_find_duplicate(client: httpx.Client, photos: dict[str, bytes]) -> None:
    want = photo_id(photos, WINE)
    body = client.post("/reverse_search", files={"image": ("q.jpg", photos[WINE])}).json()
    assert set(body) == {"phash_res", "color_res", "unified_res"}
    # phash as the gateway asked it: under distance 64; colour: the 200 nearest, first 20.
    assert body["phash_res"][0]["image_id"] == want
    assert all(h["distance"] < 64 for h in body["phash_res"])
    assert len(body["color_res"]) == min(20, len(photos))
    assert body["unified_res"][0]["image_id"] == want and body["unified_res"][0]["score"] == 2
    dup = client.post(
        "/reverse_search",
        files={"image": ("q.jpg", reencode(photos[WINE], scale=0.5, quality=50))},
        data={"find_duplicate": "1"},
    ).json()
    assert [h["image_id"] for h in dup["duplicate"]] == [want]
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    unknown = encode(Image.fromarray(noise), "JPEG")
    none = client.post(
        "/reverse_search", files={"image": ("n.jpg", unknown)}, data={"find_duplicate": "1"}
    )
    assert none.status_code == 200 and none.json() == {}
