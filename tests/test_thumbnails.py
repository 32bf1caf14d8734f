"""Thumbnails without Ray: the extractor, the blob index, the engine and the HTTP route
(real extractors in this process, real LMDB behind the index client's in-process actors)."""

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.ingress import create_app
from deployments.ports import LocalExtractor
from extractors import Thumbnail
from index_actors.blob import BlobIndex
from index_actors.client import IndexClient
from index_actors.interface import InvalidInput
from index_actors.kinds import kind_of
from tests.helpers import encode

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"


def _webp(data: np.ndarray | bytes) -> Image.Image:
    img = Image.open(io.BytesIO(bytes(data)))
    assert img.format == "WEBP"
    return img


def test_photos_become_small_webps_of_at_most_320_px(photos: dict[str, bytes]) -> None:
    thumbs = Thumbnail().extract_bytes(list(photos.values()))
    for data, thumb in zip(photos.values(), thumbs, strict=True):
        assert isinstance(thumb, np.ndarray) and thumb.dtype == np.uint8
        img = _webp(thumb)
        original = Image.open(io.BytesIO(data)).size
        assert max(img.size) == 320 and 1_000 < len(thumb) < 30_000
        # The aspect ratio is kept (to the pixel).
        assert abs(img.size[0] / img.size[1] - original[0] / original[1]) < 0.02


def test_thumbnails_follow_exif_orientation_and_never_enlarge() -> None:
    # A landscape pixel array that EXIF says to turn a quarter (orientation 6): portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = encode(Image.new("RGB", (800, 400), (200, 30, 30)), "JPEG", exif=exif)
    (thumb,) = Thumbnail().extract_bytes([turned])
    assert _webp(thumb).size == (160, 320)

    (small,) = Thumbnail().extract_bytes([encode(Image.new("RGB", (100, 60)), "PNG")])
    assert _webp(small).size == (100, 60)
    with pytest.raises(ValueError, match="size"):
        Thumbnail(size=4)


def test_blob_index_keeps_replaces_and_forgets_bytes(tmp_path: Path) -> None:
    index = BlobIndex(tmp_path / "thumbnail")
    assert index.add([1, 2], [np.frombuffer(b"one", np.uint8), np.frombuffer(b"two", np.uint8)])
    index.add([1], np.frombuffer(b"uno", np.uint8))
    assert index.docs([1, 2, 3]) == {1: b"uno", 2: b"two"} and index.count == 2
    assert index.remove([2, 3]) == [2] and index.has([1, 2]) == [1]
    with pytest.raises(InvalidInput, match="cannot be searched"):
        index.search(np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="1 to"):
        index.add([4], np.zeros(0, np.uint8))
    index.close()
    reopened = BlobIndex(tmp_path / "thumbnail")
    assert reopened.docs([1]) == {1: b"uno"}
    # A reshard copies what the store holds, as the kind turns it back into a feature.
    assert kind_of("thumbnail").stored_feature(b"uno").tobytes() == b"uno"
    reopened.close()


def _engine(data_dir: Path, features: dict[str, dict]) -> Engine:
    args = AppArgs.model_validate(
        {"name": "thumbs", "data_dir": str(data_dir), "features": features}
    )
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    return Engine(args, extractors, IndexClient.local(data_dir, args.index_specs()))


def _close(engine: Engine) -> None:
    for actors in engine.client.shards.values():
        for actor in actors:
            with contextlib.suppress(Exception):
                actor._obj.index.close()


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    """The HTTP API over phash and thumbnails, in process."""
    engine = _engine(tmp_path, {"phash": {}, "thumbnail": {}})
    yield TestClient(create_app(engine, 2 * 1024 * 1024))
    _close(engine)


def test_an_add_stores_a_thumbnail_served_with_an_etag(
    http: TestClient, photos: dict[str, bytes]
) -> None:
    r = http.post("/images", files={"image": (BRIDGE, photos[BRIDGE])}, data={"image_id": 5})
    assert r.json()["features"] == {"phash": "ok", "thumbnail": "ok"}
    got = http.get("/images/5/thumbnail")
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    assert max(_webp(got.content).size) == 320
    etag = got.headers["etag"]
    assert got.headers["cache-control"] == "private, no-cache"
    again = http.get("/images/5/thumbnail", headers={"If-None-Match": f'"x", W/{etag}'})
    assert again.status_code == 304 and not again.content and again.headers["etag"] == etag

    # Re-adding the id with another image replaces the thumbnail, and its tag.
    other = encode(Image.new("RGB", (640, 480), (10, 200, 10)), "PNG")
    http.post("/images", files={"image": ("green.png", other)}, data={"image_id": 5})
    fresh = http.get("/images/5/thumbnail", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert _webp(fresh.content).size == (320, 240)

    # Deleted with its image.
    assert http.delete("/images/5").status_code == 200
    gone = http.get("/images/5/thumbnail")
    assert gone.status_code == 404 and "no image with id 5" in gone.json()["detail"]


def test_an_image_without_a_thumbnail_and_bad_ids(
    http: TestClient, photos: dict[str, bytes]
) -> None:
    # Stored with phash only, as an image from before thumbnails: a 404 that says the fix.
    r = http.post("/images", files={"image": (BRIDGE, photos[BRIDGE])}, data={"features": "phash"})
    image_id = r.json()["image_id"]
    got = http.get(f"/images/{image_id}/thumbnail")
    assert got.status_code == 404
    assert "no thumbnail" in got.json()["detail"] and "--features thumbnail" in got.json()["detail"]
    assert http.get("/images/-1/thumbnail").status_code == 422
    assert http.get("/images/abc/thumbnail").status_code == 422
    # A thumbnail is not a search source, and says so when named.
    named = http.post(
        "/search/image", files={"image": (BRIDGE, photos[BRIDGE])}, data={"features": "thumbnail"}
    )
    assert named.status_code == 422 and "cannot be searched" in named.json()["detail"]
    found = http.post("/search/image", files={"image": (BRIDGE, photos[BRIDGE])})
    assert set(found.json()["by_feature"]) == {"phash"}


def test_thumbnails_off(tmp_path: Path, photos: dict[str, bytes]) -> None:
    engine = _engine(tmp_path, {"phash": {}, "thumbnail": {"enabled": False}})
    try:
        http = TestClient(create_app(engine, 2 * 1024 * 1024))
        r = http.post("/images", files={"image": (BRIDGE, photos[BRIDGE])})
        assert r.json()["features"] == {"phash": "ok"}
        got = http.get(f"/images/{r.json()['image_id']}/thumbnail")
        assert got.status_code == 404 and "thumbnails are off" in got.json()["detail"]
    finally:
        _close(engine)


def test_run_concurrently_with_other_features(tmp_path: Path, photos: dict[str, bytes]) -> None:
    """Many adds at once each get their own thumbnail (no mix-up between concurrent adds)."""
    engine = _engine(tmp_path, {"phash": {}, "thumbnail": {}})
    try:

        async def add_all() -> list[int]:
            adds = [engine.add(data, None, name, engine.indexed) for name, data in photos.items()]
            return [a.image_id for a in await asyncio.gather(*adds)]

        ids = asyncio.run(add_all())
        want = Thumbnail().extract_bytes(list(photos.values()))
        for image_id, thumb in zip(ids, want, strict=True):
            assert asyncio.run(engine.thumbnail(image_id)) == thumb.tobytes()
    finally:
        _close(engine)
