"""The native HTTP API against the real graph: ingest, get, delete, search, health, bad input."""

import httpx
import pytest

from tests.conftest import RunningApp
from tests.helpers import photo_id, png_bomb, reencode, store_photos

pytestmark = pytest.mark.timeout(300)

WINE = "Wine_by_Jakkub_Mede.jpg"


@pytest.fixture(scope="module")
def client(app: RunningApp, photos: dict[str, bytes]) -> httpx.Client:
    """A client of an app that holds every test photo, with ids 1..n in name order."""
    c = httpx.Client(base_url=app.url, timeout=60)
    store_photos(c, photos, {"phash": "ok", "color": "ok"})
    return c


def _counts(c: httpx.Client) -> tuple[int, int, int]:
    h = c.get("/health").json()
    return h["images"], h["indexes"]["phash"]["count"], h["indexes"]["color"]["count"]


def test_health_reports_extractors_and_counts(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["extractors"]["phash"]["available"] and body["extractors"]["color"]["available"]
    assert _counts(client) == (len(photos),) * 3


def test_get_by_id_and_by_file_name(client: httpx.Client, photos: dict[str, bytes]) -> None:
    i = photo_id(photos, WINE)
    by_id = client.get(f"/images/{i}").json()
    assert by_id["file_name"] == WINE and by_id["features"] == ["phash", "color"]
    assert client.get("/images", params={"file_name": WINE}).json() == by_id
    assert client.get("/images/424242").status_code == 404
    assert client.get("/images", params={"file_name": "nope.jpg"}).status_code == 404


def test_search_finds_the_image_and_its_edited_copies(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    want = photo_id(photos, WINE)
    for variant in (
        photos[WINE],
        reencode(photos[WINE], scale=0.5, quality=40),
        reencode(photos[WINE], mirror=True),  # found through the mirrored phash query
    ):
        r = client.post("/search/image", files={"image": ("q.jpg", variant)}, data={"k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        top = body["results"][0]
        assert top["image_id"] == want and top["file_name"] == WINE and top["duplicate"]
        assert top["matches"]["phash"]["rank"] == 1
        assert top["matches"]["phash"]["distance"] <= 64
        assert len(body["results"]) == 3
        assert body["by_feature"]["phash"][0]["image_id"] == want
        assert set(body["by_feature"]) == {"phash", "color"}


def test_search_by_one_feature_and_similar_by_id(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    want = photo_id(photos, WINE)
    r = client.post(
        "/search/image",
        files={"image": ("q.jpg", photos[WINE])},
        data={"features": "color", "k": 2},
    )
    assert set(r.json()["by_feature"]) == {"color"}
    assert r.json()["results"][0]["matches"]["color"]["distance"] == 0
    sim = client.get(f"/search/similar/{want}", params={"feature": "phash", "k": 4}).json()[
        "results"
    ]
    assert len(sim) == 4 and want not in [s["image_id"] for s in sim]
    assert [s["distance"] for s in sim] == sorted(s["distance"] for s in sim)
    assert client.get("/search/similar/424242", params={"feature": "phash"}).status_code == 404
    assert client.get(f"/search/similar/{want}", params={"feature": "sift"}).status_code == 422


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        ({"image": ("e.jpg", b"")}, {}, 400, "empty"),
        ({"image": ("t.txt", b"just some text, not an image at all")}, {}, 415, "not an image"),
        (None, {"image_id": "3"}, 422, "image"),
        ({"image": ("b.png", png_bomb())}, {}, 413, "megapixels"),
        ({"image": ("big.jpg", b"\xff" * (3 * 1024 * 1024))}, {}, 413, "limit"),
        ("WINE", {"image_id": "abc"}, 422, "image_id must be an integer"),
        ("WINE", {"image_id": "-4"}, 422, "image_id"),
        ("WINE", {"features": "phash,sift"}, 422, "sift"),
        ("WINE", {"file_name": "x" * 300}, 422, "file_name"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_store_nothing(
    client: httpx.Client,
    photos: dict[str, bytes],
    files: object,
    data: dict,
    status: int,
    words: str,
) -> None:
    before = _counts(client)
    if files == "WINE":
        files = {"image": ("w.jpg", photos[WINE])}
    r = client.post("/images", files=files, data=data)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _counts(client) == before


def test_truncated_jpeg_is_refused(client: httpx.Client, photos: dict[str, bytes]) -> None:
    before = _counts(client)
    data = photos[WINE]
    r = client.post("/images", files={"image": ("cut.jpg", data[: len(data) // 2])})
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    r = client.post("/search/image", files={"image": ("cut.jpg", data[: len(data) // 2])})
    assert r.status_code == 400
    assert _counts(client) == before


def test_bad_search_parameters(client: httpx.Client, photos: dict[str, bytes]) -> None:
    q = {"image": ("q.jpg", photos[WINE])}
    assert client.post("/search/image", files=q, data={"k": "0"}).status_code == 422
    assert client.post("/search/image", files=q, data={"k": "many"}).status_code == 422
    assert client.post("/search/image", data={"k": "3"}).status_code == 422


def test_readd_replaces_and_delete_removes_everywhere(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    base = _counts(client)
    small = reencode(photos[WINE], scale=0.3)
    r = client.post("/images", files={"image": ("copy.jpg", small)}, data={"image_id": 500})
    assert r.status_code == 200 and _counts(client) == tuple(n + 1 for n in base)
    # Same id again, other file name: replaced, not added.
    r = client.post("/images", files={"image": ("copy2.jpg", small)}, data={"image_id": 500})
    assert r.json()["file_name"] == "copy2.jpg" and _counts(client) == tuple(n + 1 for n in base)
    assert client.get("/images", params={"file_name": "copy.jpg"}).status_code == 404
    # Without an id, a known file name (given as the file_name field) keeps its id.
    again = client.post(
        "/images", files={"image": ("x.jpg", small)}, data={"file_name": "copy2.jpg"}
    )
    assert again.json()["image_id"] == 500
    assert client.delete("/images/500").json() == {"image_id": 500, "deleted": True}
    assert _counts(client) == base
    assert client.delete("/images/500").status_code == 404
    assert client.delete("/images/notanumber").status_code == 422
    hits = client.post("/search/image", files={"image": ("q.jpg", small)}, data={"k": 20}).json()
    assert 500 not in [h["image_id"] for h in hits["results"]]


def test_ids_are_allocated_when_not_given(client: httpx.Client, photos: dict[str, bytes]) -> None:
    r = client.post("/images", files={"image": ("new.jpg", reencode(photos[WINE], scale=0.2))})
    body = r.json()
    assert (
        r.status_code == 200 and body["image_id"] > len(photos) and body["file_name"] == "new.jpg"
    )
    assert client.delete(f"/images/{body['image_id']}").status_code == 200


def test_upload_names_are_labels_not_identities(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """Phones and browsers name every upload alike: two "image.jpg" are two images."""
    a = client.post("/images", files={"image": ("image.jpg", reencode(photos[WINE], scale=0.2))})
    b = client.post("/images", files={"image": ("image.jpg", reencode(photos[WINE], scale=0.3))})
    ida, idb = a.json()["image_id"], b.json()["image_id"]
    assert ida != idb and b.json()["file_name"] == f"image.jpg#{idb}"
    for i in (ida, idb):
        assert client.delete(f"/images/{i}").status_code == 200
    # Deleted ids are not handed out again.
    c = client.post("/images", files={"image": ("other.jpg", reencode(photos[WINE], scale=0.2))})
    assert c.json()["image_id"] > idb
    assert client.delete(f"/images/{c.json()['image_id']}").status_code == 200


def test_readd_with_fewer_features_drops_the_old_ones(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    small = reencode(photos[WINE], scale=0.3)
    client.post("/images", files={"image": ("s.jpg", small)}, data={"image_id": 600})
    r = client.post(
        "/images", files={"image": ("s.jpg", small)}, data={"image_id": 600, "features": "phash"}
    )
    assert r.json()["features"] == {"phash": "ok"}
    assert client.get("/images/600").json()["features"] == ["phash"]
    assert client.delete("/images/600").status_code == 200


def test_concurrent_uploads_batch_good_and_bad_apart(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """Concurrent adds share @serve.batch batches; a bad file fails only itself."""
    from concurrent.futures import ThreadPoolExecutor

    good = [reencode(d, scale=0.2) for d in photos.values()]
    bad = [b"nope", good[0][:300], b"", b"GIF89a"]
    jobs = [(700 + i, data) for i, data in enumerate(good + bad)]
    before = _counts(client)

    def post(job: tuple[int, bytes]) -> int:
        image_id, data = job
        files = {"image": (f"{image_id}.jpg", data)}
        return client.post("/images", files=files, data={"image_id": image_id}).status_code

    with ThreadPoolExecutor(len(jobs)) as pool:
        codes = list(pool.map(post, jobs))
    assert codes[: len(good)] == [200] * len(good)
    assert all(400 <= c < 500 for c in codes[len(good) :])
    assert _counts(client) == tuple(n + len(good) for n in before)
    for image_id, _ in jobs[: len(good)]:
        assert client.delete(f"/images/{image_id}").status_code == 200


def test_threshold_modes(client: httpx.Client, photos: dict[str, bytes]) -> None:
    want = photo_id(photos, WINE)
    q = {"image": ("q.jpg", reencode(photos[WINE], scale=0.5, quality=50))}
    dups = client.post("/search/image", files=q, data={"duplicates_only": "1"}).json()
    assert [r["image_id"] for r in dups["results"]] == [want]
    assert set(dups["by_feature"]) == {"phash"}
    sim = client.get(f"/search/similar/{want}", params={"feature": "phash", "threshold": 0})
    assert sim.json() == {"results": []}
    wide = client.get(f"/search/similar/{want}", params={"threshold": 576, "k": 1000}).json()
    assert len(wide["results"]) == len(photos) - 1
    two = client.get(f"/search/similar/{want}", params={"feature": "phash,color"})
    assert two.status_code == 422


def test_chunked_upload_over_the_cap_is_refused(client: httpx.Client) -> None:
    """No Content-Length to trust: the body is counted as it streams in."""
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(48):  # 3 MiB in 64 KiB chunks, over the test app's 2 MiB cap
            yield b"\xff" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    before = _counts(client)
    r = client.post(
        "/images",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "stopped reading" in r.json()["detail"]
    assert _counts(client) == before


def test_duplicate_groups_through_the_index_actors(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """``GET /duplicates`` reads every stored hash from the actor and groups a mirrored copy
    with its original; deleted again, the group is gone (the kept grouping is not stale)."""
    want = photo_id(photos, WINE)
    mirrored = {"image": ("wine-mirrored.jpg", reencode(photos[WINE], mirror=True))}
    copy = client.post("/images", files=mirrored).json()["image_id"]
    try:
        found = client.get("/duplicates", params={"threshold": 16}).json()
        assert [[i["image_id"] for i in g["images"]] for g in found["groups"]] == [[want, copy]]
        assert found["groups"][0]["images"][1]["file_name"] == "wine-mirrored.jpg"
    finally:
        assert client.delete(f"/images/{copy}").status_code == 200
    assert client.get("/duplicates", params={"threshold": 16}).json()["total_groups"] == 0


def test_the_page_is_served_by_the_ingress(client: httpx.Client) -> None:
    """The page at / and its files come through Serve as from the app in process (its
    browser tests: tests/test_browser.py)."""
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "web/app.js" in page.text
    script = client.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
