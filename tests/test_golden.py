"""Golden test of the HTTP API: a fixed, ordered list of requests replayed against the real
graph, each answer compared with the one recorded from the code before the ingress refactor.

One app runs phash, color, global, clip (a tiny random CLIP), local, tags and ocr (no
caption, so /get_image_caption answers its 503). Every native and seed-compatible route is
called, with good and bad input, in an order where earlier requests build the state later
ones read (uploads, re-adds, deletes).

Answers are normalised before they are compared, so that the comparison is about statuses,
ids, order and fields, not float noise, temp paths or reworded messages: every float becomes
``"<float>"``; an error (status >= 400) keeps only its status and whether ``detail`` is a
string; GET /health keeps its structure (keys, ``available`` flags, counts), not reasons or
paths; a body that is not JSON keeps only whether it is empty.

Replay: ``.venv/bin/pytest tests/test_golden.py``; a mismatch lists each request that
differs (index, method, path, fields) with the recorded and the new answer.

Re-record only from code whose answers are right, e.g. a git worktree at the commit before
the change (PYTHONPATH makes Ray's workers import that tree; the file lands in that tree's
tests/golden/, and the run prints which graph.py answered)::

    cp tests/test_golden.py ../old/tests/ && cd ../old && GOLDEN_RECORD=1 PYTHONPATH=$PWD \
        ../main/.venv/bin/pytest tests/test_golden.py -s -p no:cacheprovider

then copy tests/golden/answers.json back. When the request list changes, record twice and
check that both files are identical: every answer here must be the same from run to run.
"""

import io
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.common import DEJAVU
from tests.conftest import RunningApp
from tests.helpers import encode, reencode, tiny_clip_dir

pytestmark = pytest.mark.timeout(300)

ANSWERS = Path(__file__).parent / "golden" / "answers.json"
RECORD = os.environ.get("GOLDEN_RECORD") == "1"

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"
DRAGONFLY = "Dragonfly_by_Bolly.jpg"
WINE = "Wine_by_Jakkub_Mede.jpg"
PARCEL = "Please sign here to receive your parcel"
NOTICE = "Your parcel is at the post office"


def text_image(line: str) -> bytes:
    """A photo-sized JPEG with one line of text on it (for OCR)."""
    img = Image.new("RGB", (1200, 300), (240, 236, 228))
    face = ImageFont.truetype(str(DEJAVU / "DejaVuSans.ttf"), 48)
    ImageDraw.Draw(img).text((40, 110), line, fill=(25, 25, 35), font=face)
    return encode(img, quality=85)


def crop(data: bytes, area: float) -> bytes:
    """A crop of ``area`` of a photo (for local features)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = area**0.5
    box = (int(w * 0.3), int(h * 0.2), int(w * (0.3 + s)), int(h * (0.2 + s)))
    return encode(img.crop(box), quality=90)


def noise() -> bytes:
    """Seeded random pixels: no near-duplicate of anything stored."""
    pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), quality=90)


# --- the requests -----------------------------------------------------------------------
# Each is a JSON-able description: method, path, and optional params (query), data (form
# fields), json (body) and file (payload name, upload file name). Payloads are built by the
# `payloads` fixture; a photo's payload name is its file name.


def get(path: str, **params: Any) -> dict[str, Any]:
    return {"method": "GET", "path": path, **({"params": params} if params else {})}


def delete(path: str) -> dict[str, Any]:
    return {"method": "DELETE", "path": path}


def post(path: str, file: str | None = None, name: str | None = None, **data: Any) -> dict:
    """A multipart POST: the payload ``file`` uploaded as ``name`` (default: ``file``)."""
    req: dict[str, Any] = {"method": "POST", "path": path}
    if file is not None:
        req["file"] = [file, name or file]
    if data:
        req["data"] = data
    return req


def post_json(path: str, body: Any) -> dict[str, Any]:
    return {"method": "POST", "path": path, "json": body}


PHOTOS = [
    "Bridge_by_Sander_Klootwijk.jpg",
    "Dragonfly_by_Bolly.jpg",
    "Wine_by_Jakkub_Mede.jpg",
    "friends_by_Aitzol_Berasategi.jpg",
    "greentock_by_Peter_Nerlich.jpg",
    "seeding_by_Clements_Engelhardt.jpg",
    "sunset_by_Aitzol_Berasategi.jpg",
    "umang_by_Abhishek_Mudgal.jpg",
]
LOCAL_SEED = {
    "k_clusters": 3,
    "knn_min_matches": 2,
    "matching_threshold": 150,
    "use_smnn_matching": 1,
    "use_ransac": 1,
}

REQUESTS: list[dict[str, Any]] = [
    get("/health"),
    # Ids 1..8: the photos in name order, every feature.
    *(post("/images", p, image_id=i) for i, p in enumerate(PHOTOS, start=1)),
    # No id: a new one (9), named by the upload.
    post("/images", "parcel", "parcel.jpg"),
    post("/images", "flat", "flat.png", file_name="flat image", features="phash,color"),
    post("/images", "notice", image_id=12, file_name="notice.jpg"),
    post("/images", "bridge_half", image_id=20, file_name="half.jpg", features="phash,global"),
    # Re-add id 20: another image, other features (the old ones go).
    post("/images", "wine_mirror", image_id=20, file_name="half.jpg", features="color"),
    get("/images/20"),
    # Re-add by file name (no id): replaces image 9.
    post("/images", "parcel", "again.jpg", file_name="parcel.jpg"),
    post("/images", "bridge_half", image_id=21, file_name="half.jpg"),  # name taken: 409
    post("/images", "empty", "empty.jpg"),
    post("/images", "text", "notes.txt"),
    post("/images", "big", "big.jpg"),
    post("/images", BRIDGE, image_id=-1),
    post("/images", BRIDGE, features="phash,bogus"),
    post("/images", BRIDGE, file_name="x" * 300),
    post("/images", image_id=5),
    get("/images/1"),
    get("/images/9"),
    get("/images/999"),
    get("/images/abc"),
    get("/images", file_name="parcel.jpg"),
    get("/images", file_name="nope.jpg"),
    get("/images"),
    # Search by image.
    post("/search/image", "bridge_half", k=5),
    post("/search/image", "dragonfly_q30", k=3, features="phash"),
    post("/search/image", "wine_mirror", duplicates_only=1),
    post("/search/image", "bridge_half", k=4, phash_threshold=10),
    post("/search/image", "bridge_half", k=4, features="global,clip", aqe_n=2, aqe_alpha=1),
    post("/search/image", "bridge_crop", k=3, features="local"),
    post("/search/image", "parcel", k=3, features="ocr"),
    post("/search/image", "flat", features="local"),
    post("/search/image", "bridge_half", k="many"),
    post("/search/image", "bridge_half", features="bogus"),
    post("/search/image", "bridge_half", aqe_n=1000),
    post("/search/image", "empty"),
    post("/search/image", k=3),
    # Similar by id, each feature.
    get("/search/similar/1", k=3),
    get("/search/similar/1", feature="color", k=3),
    get("/search/similar/1", feature="global", k=3),
    get("/search/similar/1", feature="clip", k=3, aqe_n=2),
    get("/search/similar/9", feature="ocr", k=3),
    get("/search/similar/1", feature="tags", k=3),
    get("/search/similar/1", feature="phash", threshold=282),
    get("/search/similar/1", feature="phash,color"),
    get("/search/similar/1", feature="bogus"),
    get("/search/similar/1", k=0),
    get("/search/similar/1", threshold="abc"),
    get("/search/similar/999"),
    get("/search/similar/abc"),
    get("/search/similar/20", feature="phash"),
    # Text search.
    get("/search/text", q="receive parcel", k=5),
    get("/search/text", q="recieve", k=5),
    get("/search/text", q="bridge", features="clip", k=3),
    get("/search/text", q="", k=3),
    get("/search/text", q="?! ..."),
    get("/search/text", q="bridge", features="phash"),
    get("/search/text", q="a" * 1001),
    # Analyze.
    post("/analyze", "parcel"),
    post("/analyze", BRIDGE),
    post("/analyze", "empty"),
    post("/analyze"),
    # Seed gateway and services.
    post("/calculate_all_image_features", "dragonfly_q30", image_id=30),
    post("/calculate_all_image_features", "dragonfly_q30"),
    post("/calculate_phash_features", "wine_mirror", image_id=31),
    post("/calculate_color_features", "wine_mirror", image_id=31),
    post("/calculate_local_features", "wine_mirror", image_id=31),
    post("/calculate_global_features", "wine_mirror", image_id=31),
    post("/calculate_image_text_features", "wine_mirror", image_id=31),
    post("/calculate_bogus_features", "wine_mirror", image_id=31),
    get("/images/31"),
    # Id 30 is a recompressed copy of 2: local features match it. The distance thresholds
    # below sit between recorded distances (the seed's is strict: phash 282 leaves out 282).
    get("/search/similar/30", feature="local", k=3),
    post_json("/phash_get_similar_images_by_id", {"image_id": 1, "k": 3}),
    post_json("/phash_get_similar_images_by_id", {"image_id": 1, "distance_threshold": 282}),
    post_json("/color_get_similar_images_by_id", {"image_id": 1, "distance_threshold": 17500000}),
    post_json("/local_features_get_similar_images_by_id", {"image_id": 30, "k": 3}),
    post_json("/local_features_get_similar_images_by_id", {"image_id": 30, "k": 3, **LOCAL_SEED}),
    post_json(
        "/global_features_get_similar_images_by_id", {"image_id": 1, "distance_threshold": 0.7}
    ),
    post_json("/image_text_features_get_similar_images_by_id", {"image_id": 1, "k": 3}),
    post_json("/phash_get_similar_images_by_id", {"image_id": 1, "k": 3, "distance_threshold": 9}),
    post_json("/phash_get_similar_images_by_id", {"image_id": 1, "k": 0}),
    post_json("/phash_get_similar_images_by_id", {"image_id": 999}),
    post_json("/bogus_get_similar_images_by_id", {"image_id": 1}),
    post("/phash_get_similar_images_by_image_buffer", "wine_mirror", k=3),
    post("/color_get_similar_images_by_image_buffer", WINE, distance_threshold=0.5),
    post("/local_features_get_similar_images_by_image_buffer", "bridge_crop", k=3),
    post("/local_features_get_similar_images_by_image_buffer", "bridge_crop", k=3, **LOCAL_SEED),
    post("/global_features_get_similar_images_by_image_buffer", "bridge_half", k=3, aqe_n=1),
    post("/global_features_get_similar_images_by_image_buffer", BRIDGE, distance_threshold=0.7),
    post("/image_text_features_get_similar_images_by_image_buffer", "bridge_half", k=3),
    post("/phash_get_similar_images_by_image_buffer", WINE, k=3, distance_threshold=5),
    post("/local_features_get_similar_images_by_image_buffer", "flat", k=3),
    post("/phash_get_similar_images_by_image_buffer", "empty"),
    post_json("/image_text_features_get_similar_images_by_text", {"text": "a bridge", "k": 3}),
    post_json(
        "/image_text_features_get_similar_images_by_text",
        {"text": "a bridge", "distance_threshold": 0.914},
    ),
    post_json("/image_text_features_get_similar_images_by_text", {"text": ""}),
    post_json("/image_text_features_get_similar_images_by_text", {"text": "x", "k": "many"}),
    post("/reverse_search", "bridge_half"),
    post("/reverse_search", "wine_mirror", find_duplicate=1),
    post("/reverse_search", "noise", find_duplicate=1),
    post("/reverse_search", "empty"),
    post_json("/delete_phash_features", {"image_id": 31}),
    post_json("/delete_phash_features", {"image_id": 31}),
    post_json("/delete_color_features", {"file_name": "parcel.jpg"}),
    get("/images/9"),
    post_json("/delete_local_features", {"file_name": "nope.jpg"}),
    post_json("/delete_global_features", {}),
    post_json("/delete_bogus_features", {"image_id": 31}),
    get("/images/31"),
    post_json("/delete_all_image_features", {"image_id": 30}),
    post_json("/delete_all_image_features", {"image_id": 30}),
    post_json("/delete_all_image_features", {}),
    post("/get_image_tags", BRIDGE),
    post("/get_image_caption", BRIDGE),
    # Native deletes, and what is left.
    delete("/images/10"),
    delete("/images/10"),
    delete("/images/abc"),
    get("/search/similar/1", k=20),
    get("/health"),
]


# --- normalisation ------------------------------------------------------------------------


def scrub(value: Any) -> Any:
    """A JSON value with every float replaced by ``"<float>"``."""
    if isinstance(value, float):
        return "<float>"
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def health_shape(body: dict[str, Any]) -> dict[str, Any]:
    """/health without reasons and paths: keys, ``available`` flags, counts."""

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return "<path>" if "/" in value else value
        return scrub(value)

    return {
        "status": body.get("status"),
        "images": body.get("images"),
        "extractors": {
            name: {
                "keys": sorted(info),
                **{k: plain(v) for k, v in info.items() if k not in ("reason", "error")},
            }
            for name, info in body.get("extractors", {}).items()
        },
        "indexes": {
            name: {k: plain(v) if k != "error" else "<error>" for k, v in info.items()}
            for name, info in body.get("indexes", {}).items()
        },
    }


def normalise(req: dict[str, Any], response: httpx.Response) -> dict[str, Any]:
    """What of an answer the comparison looks at."""
    out: dict[str, Any] = {"status": response.status_code}
    try:
        body = response.json()
    except ValueError:
        out["empty"] = not response.content
        return out
    if response.status_code >= 400:
        out["detail_is_str"] = isinstance(body, dict) and isinstance(body.get("detail"), str)
    elif req["path"] == "/health":
        out["body"] = health_shape(body)
    else:
        out["body"] = scrub(body)
    return out


# --- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The golden app's settings (``golden_settings``)."""
    return golden_settings(tmp_path_factory)


def golden_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every feature but caption and places: the weight-free ones, global and tags on the
    packaged EfficientNet-Lite0, a tiny random (seeded) CLIP, Tesseract OCR (the engine the
    answers were recorded with: /analyze shows its word boxes). Over configs/serve.yaml's
    entries, the settings the answers were recorded with: colour's fusion weight 1, and the
    tagger with its own defaults in a deployment of its own (the shipped file weighs colour
    0.5, and its tags ride on global's pass, which reads the whole short side)."""
    clip_dir = tiny_clip_dir(tmp_path_factory.mktemp("clip"))
    return {
        "features": {
            "phash": {},
            "color": {"weight": 1.0},
            "global": {},
            "clip": {"options": {"model": f"local-dir:{clip_dir}"}},
            "local": {},
            "tags": {"options": {}, "deployment": "extract_tags"},
            "ocr": {"options": {"engine": "tesseract"}},
        }
    }


@pytest.fixture(scope="module")
def payloads(photos: dict[str, bytes]) -> dict[str, bytes]:
    """Upload bodies by name: the photos, variants of them, generated images, bad files."""
    return {
        **photos,
        "bridge_half": reencode(photos[BRIDGE], scale=0.5, quality=90),
        "bridge_crop": crop(photos[BRIDGE], 0.3),
        "wine_mirror": reencode(photos[WINE], mirror=True, quality=90),
        "dragonfly_q30": reencode(photos[DRAGONFLY], quality=30),
        "parcel": text_image(PARCEL),
        "notice": text_image(NOTICE),
        "flat": encode(Image.new("RGB", (640, 480), (90, 120, 150)), "PNG"),
        "noise": noise(),
        "empty": b"",
        "text": b"these are notes, not an image\n",
        "big": b"\xff" * (3 * 1024 * 1024),  # over the test app's 2 MB cap
    }


def send(client: httpx.Client, req: dict[str, Any], payloads: dict[str, bytes]) -> httpx.Response:
    """One request; form fields without a file go urlencoded (httpx's choice)."""
    files = None
    if "file" in req:
        payload, upload_name = req["file"]
        files = {"image": (upload_name, payloads[payload], "application/octet-stream")}
    return client.request(
        req["method"],
        req["path"],
        params=req.get("params"),
        data={k: str(v) for k, v in req.get("data", {}).items()} or None,
        json=req.get("json"),
        files=files,
    )


def describe(index: int, req: dict[str, Any]) -> str:
    extra = {k: v for k, v in req.items() if k not in ("method", "path")}
    return f"#{index} {req['method']} {req['path']} {json.dumps(extra)[:200]}"


def replay(app: RunningApp, payloads: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every request of ``REQUESTS`` in order, each answer normalised."""
    with httpx.Client(base_url=app.url, timeout=120) as client:
        return [normalise(req, send(client, req, payloads)) for req in REQUESTS]


def differences(answers: list[dict[str, Any]], skip: Any = None) -> list[str]:
    """The requests whose answer differs from the recorded one (``skip``: a predicate of
    requests left out of the comparison), each with both answers."""
    recorded = json.loads(ANSWERS.read_text())
    assert [e["request"] for e in recorded] == json.loads(json.dumps(REQUESTS)), (
        "the request list differs from the recorded one: re-record (see the docstring)"
    )
    return [
        f"{describe(i, e['request'])}\n  recorded: {json.dumps(e['answer'])}\n"
        f"  now:      {json.dumps(got)}"
        for i, (e, got) in enumerate(zip(recorded, answers, strict=True))
        if e["answer"] != got and not (skip and skip(e["request"]))
    ]


def test_answers_match_the_recorded_ones(app: RunningApp, payloads: dict[str, bytes]) -> None:
    answers = replay(app, payloads)
    if RECORD:
        import ray

        import graph

        @ray.remote
        def where() -> str:
            import graph

            return str(graph.__file__)

        print(f"\nrecording from {graph.__file__} (Ray workers: {ray.get(where.remote())})")
        ANSWERS.parent.mkdir(exist_ok=True)
        entries = [{"request": r, "answer": a} for r, a in zip(REQUESTS, answers, strict=True)]
        ANSWERS.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
        return
    differ = differences(answers)
    assert not differ, f"{len(differ)} answers differ:\n" + "\n".join(differ)
