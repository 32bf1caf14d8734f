"""Tags, OCR and captions through the real graph (embedded text store): stored per image,
searchable by text (misspelt and sound-alike words too), /analyze, the seed routes, and
batch ingest. The PostgreSQL backend has its own module (test_text_pg_api.py)."""

from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.common import DEJAVU
from deployments.config import AppArgs
from deployments.ingest import ingest
from tests.conftest import RunningApp, serve_config
from tests.helpers import encode, places_dir, tiny_blip_dir

pytestmark = pytest.mark.timeout(300)

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"
PARCEL = "Please sign here to receive your parcel"
STUDIO = "Photo studio open every Sunday"
ALL_OK = {"phash": "ok", "tags": "ok", "ocr": "ok", "caption": "ok", "places": "ok"}


def text_image(line: str, font: str = "DejaVuSans.ttf") -> bytes:
    """A photo-sized JPEG with one line of text on it."""
    img = Image.new("RGB", (1200, 300), (240, 236, 228))
    face = ImageFont.truetype(str(DEJAVU / font), 48)
    ImageDraw.Draw(img).text((40, 110), line, fill=(25, 25, 35), font=face)
    return encode(img, quality=85)


@pytest.fixture(scope="module")
def app_overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """phash beside the text features; a tiny BLIP (it likes the word "bridge") and random
    Places365 networks (sure of "bridge", outdoor)."""
    blip = tiny_blip_dir(tmp_path_factory.mktemp("blip"))
    places = places_dir(tmp_path_factory.mktemp("places"))
    return {
        "features": {
            "phash": {},
            "tags": {"options": {"cutoff": 0.05}},
            "ocr": {},
            "caption": {"options": {"model": str(blip), "num_beams": 2, "max_new_tokens": 5}},
            "places": {"enabled": True, "options": {"folder": str(places), "attributes": 3}},
        }
    }


@pytest.fixture(scope="module")
def uploads(photos: dict[str, bytes]) -> dict[int, bytes]:
    """The images the module stores, by id."""
    return {
        1: text_image(PARCEL),
        2: text_image(STUDIO),
        3: photos[BRIDGE],
        4: encode(Image.new("RGB", (640, 480), (90, 120, 150)), "PNG"),  # no text at all
        5: text_image(PARCEL, "DejaVuSerif-Bold.ttf"),
    }


@pytest.fixture(scope="module")
def client(app: RunningApp, uploads: dict[int, bytes]) -> httpx.Client:
    c = httpx.Client(base_url=app.url, timeout=120)
    for image_id, data in uploads.items():
        r = c.post(
            "/images", files={"image": (f"{image_id}.jpg", data)}, data={"image_id": image_id}
        )
        assert r.status_code == 200, r.text
        assert r.json()["features"] == ALL_OK
    return c


def test_stored_text_tags_and_caption(client: httpx.Client) -> None:
    parcel = client.get("/images/1").json()
    assert "receive" in parcel["text"].lower() and "parcel" in parcel["text"].lower()
    assert "bridge" in parcel["caption"]  # what the tiny captioner says of everything
    bridge = client.get("/images/3").json()
    tags = [t["label"] for t in bridge["tags"]]
    assert "suspension bridge" in tags  # ImageNet's, then Places365's
    assert tags[-5:-3] == ["bridge", "outdoor"] and tags[-1].startswith("attribute")
    assert all(0.05 <= t["score"] <= 1 for t in bridge["tags"][: tags.index("bridge")])
    flat = client.get("/images/4").json()  # an image with no text is stored, with none
    assert flat["text"] is None and set(flat["features"]) == set(ALL_OK)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["indexes"]["ocr"] == {"count": 5}


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("receive parcel", {1, 5}),  # exact
        ("recieve", {1, 5}),  # misspelt
        ("foto studio", {2}),  # sound-alike
        ("suspension bridge", {3}),  # a tag
    ],
)
def test_search_text_finds_by_ocr_tags_and_misspellings(
    client: httpx.Client, query: str, want: set[int]
) -> None:
    r = client.get("/search/text", params={"q": query, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {x["image_id"] for x in body["results"][: len(want)]} == want, body
    assert set(body["by_feature"]) == {"tags", "ocr", "caption", "places"}
    assert body["unavailable"] == {}
    top = body["results"][0]
    assert top["file_name"] and top["score"] > 0 and top["matches"]


def test_search_text_by_one_source_and_bad_queries(client: httpx.Client) -> None:
    r = client.get("/search/text", params={"q": "bridge", "features": "caption"})
    assert r.status_code == 200 and set(r.json()["by_feature"]) == {"caption"}
    assert len(r.json()["results"]) == 5  # every caption says "bridge"
    for q in ("привет мир", "東京タワー"):  # other scripts: answered, nothing matches here
        r = client.get("/search/text", params={"q": q})
        assert r.status_code == 200 and r.json()["results"] == [], r.text
    bad = [
        ({"q": ""}, "empty"),
        ({"q": "   "}, "empty"),
        ({"q": "?!... ---"}, "no words"),
        ({"q": "word " * 2000}, "limit is 1000"),
        ({"q": " ".join(f"word{i}" for i in range(65))}, "limit is 64"),
        ({"q": "parcel", "features": "phash"}, "cannot search by text"),
        ({"q": "parcel", "features": "clip"}, "unknown or disabled"),
        ({"q": "parcel", "k": 0}, "k must be"),
    ]
    for params, message in bad:
        r = client.get("/search/text", params=params)
        assert r.status_code == 422 and message in r.json()["detail"], (params, r.text)


def test_similar_by_text_and_image_search_by_its_text(
    client: httpx.Client, uploads: dict[int, bytes]
) -> None:
    r = client.get("/search/similar/1", params={"feature": "ocr", "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["image_id"] == 5, r.text
    r = client.get("/search/similar/4", params={"feature": "ocr"})  # no text: no neighbours
    assert r.status_code == 200 and r.json()["results"] == []
    query = text_image("receive the parcel here", "DejaVuSerif-Bold.ttf")
    r = client.post("/search/image", files={"image": ("q.jpg", query)}, data={"k": 3})
    assert set(r.json()["by_feature"]) == {"phash"}  # text sources only when asked for
    r = client.post(
        "/search/image", files={"image": ("q.jpg", query)}, data={"k": 3, "features": "ocr"}
    )
    assert r.status_code == 200 and {x["image_id"] for x in r.json()["results"][:2]} == {1, 5}
    r = client.post(
        "/search/image", files={"image": ("q.png", uploads[4])}, data={"features": "ocr"}
    )
    assert r.status_code == 422 and "no text" in r.json()["detail"]


def test_analyze_stores_nothing(client: httpx.Client, photos: dict[str, bytes]) -> None:
    r = client.post("/analyze", files={"image": ("x.jpg", text_image("Fresh bread daily"))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "bread" in body["text"].lower() and body["unavailable"] == {}
    assert {w["text"].lower() for w in body["words"]} >= {"fresh", "bread", "daily"}
    assert all(len(w["box"]) == 4 for w in body["words"])
    assert isinstance(body["caption"], str) and isinstance(body["tags"], list)
    assert client.get("/health").json()["images"] == 5
    r = client.post("/analyze", files={"image": ("x.jpg", b"not an image")})
    assert r.status_code in (400, 415, 422), r.text
    assert client.post("/analyze").status_code == 422


def test_seed_tag_and_caption_routes(client: httpx.Client, photos: dict[str, bytes]) -> None:
    r = client.post("/get_image_tags", files={"image": ("b.jpg", photos[BRIDGE])})
    assert r.status_code == 200, r.text
    assert r.json()[:2] == ["bridge", "outdoor"] and "suspension bridge" in r.json()
    r = client.post("/get_image_caption", files={"image": ("b.jpg", photos[BRIDGE])})
    assert r.status_code == 200 and "bridge" in r.json(), r.text
    r = client.post("/get_image_caption", files={"image": ("b.jpg", b"\xff\xd8 broken")})
    assert 400 <= r.status_code < 500


def test_delete_removes_the_text(client: httpx.Client, uploads: dict[int, bytes]) -> None:
    r = client.post("/images", files={"image": ("6.jpg", text_image("Harbour ferry"))})
    new = r.json()["image_id"]
    assert (
        client.get("/search/text", params={"q": "harbour"}).json()["results"][0]["image_id"] == new
    )
    assert client.delete(f"/images/{new}").status_code == 200
    hits = client.get("/search/text", params={"q": "harbour ferry"}).json()["results"]
    assert new not in {h["image_id"] for h in hits}


def test_batch_ingest_computes_text_features(
    app: RunningApp, app_overrides: dict, client: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "100.jpg").write_bytes(text_image("Lighthouse tours at noon"))
    (tmp_path / "101.png").write_bytes(encode(Image.new("RGB", (300, 200), "white"), "PNG"))
    args = AppArgs.model_validate(serve_config(app.name, app.data_dir, **app_overrides)["args"])
    try:
        report = ingest(tmp_path, args, ids_from_filenames=True, progress=False, app_name="test")
        assert report.stored == 2 and not report.failed, report.summary()
        assert "lighthouse" in client.get("/images/100").json()["text"].lower()
        r = client.get("/search/text", params={"q": "lighthose tours", "features": "ocr"})
        assert r.json()["results"][0]["image_id"] == 100
    finally:  # the other tests count the module's own images
        for image_id in (100, 101):
            client.delete(f"/images/{image_id}")
