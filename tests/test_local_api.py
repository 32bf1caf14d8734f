"""Local features through the real graph: crops found over HTTP, seed routes, no keypoints."""

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from deployments.config import AppArgs
from deployments.ingest import ingest
from index_actors.client import IndexClient
from scripts.train_index import run as train_and_adopt
from tests.conftest import RunningApp
from tests.helpers import encode, photo_id, store_photos

pytestmark = pytest.mark.timeout(300)

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    return {"features": {"phash": {}, "local": {}}}


@pytest.fixture(scope="module")
def client(app: RunningApp, photos: dict[str, bytes]) -> httpx.Client:
    c = httpx.Client(base_url=app.url, timeout=60)
    store_photos(c, photos, {"phash": "ok", "local": "ok"})
    return c


def _crop(data: bytes, area: float) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = area**0.5
    return encode(img.crop((int(w * 0.3), int(h * 0.2), int(w * (0.3 + s)), int(h * (0.2 + s)))))


def test_a_crop_is_found_where_phash_fails(client: httpx.Client, photos: dict[str, bytes]) -> None:
    r = client.post("/search/image", files={"image": _crop(photos[BRIDGE], 0.3)}, data={"k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["by_feature"]["local"][0]["image_id"] == photo_id(photos, BRIDGE)
    assert body["by_feature"]["local"][0]["distance"] < 0.2  # 1 / (1 + inliers)
    r = client.get(f"/search/similar/{photo_id(photos, BRIDGE)}", params={"feature": "local"})
    assert r.status_code == 200 and photo_id(photos, BRIDGE) not in {
        h["image_id"] for h in r.json()["results"]
    }


def test_seed_local_routes(client: httpx.Client, photos: dict[str, bytes]) -> None:
    want = photo_id(photos, BRIDGE)
    crop = _crop(photos[BRIDGE], 0.3)
    r = client.post(
        "/local_features_get_similar_images_by_image_buffer",
        files={"image": crop},
        data={"k": 2, "use_smnn_matching": 1, "use_ransac": 1, "k_clusters": 3},
    )
    assert r.status_code == 200, r.text
    top = r.json()[0]
    assert top["image_id"] == want and top["matches"] >= 8 and set(top) >= {"file_name"}
    # The seed's defaults: votes only.
    r = client.post("/local_features_get_similar_images_by_image_buffer", files={"image": crop})
    assert r.status_code == 200 and r.json()[0]["image_id"] == want
    r = client.post("/local_features_get_similar_images_by_id", json={"image_id": want, "k": 3})
    assert r.status_code == 200, r.text
    r = client.post(
        "/local_features_get_similar_images_by_image_buffer",
        files={"image": crop},
        data={"k_clusters": 1000},
    )
    assert r.status_code == 422


def test_an_image_without_keypoints(client: httpx.Client) -> None:
    flat = encode(Image.new("RGB", (300, 200), (90, 120, 150)), "PNG")
    r = client.post("/search/image", files={"image": flat}, data={"features": "local"})
    assert r.status_code == 422 and "no keypoints" in r.json()["detail"]
    r = client.post("/local_features_get_similar_images_by_image_buffer", files={"image": flat})
    assert r.status_code == 422
    # Fused with phash, local just has nothing to add.
    r = client.post("/search/image", files={"image": flat})
    assert r.status_code == 200 and set(r.json()["by_feature"]) == {"phash"}
    # Stored without local matches, not refused.
    r = client.post("/images", files={"image": ("flat.png", flat)})
    assert r.status_code == 200 and r.json()["features"]["local"] == "ok"


def test_ray_data_ingest_computes_local_features(
    client: httpx.Client, app: RunningApp, photos: dict[str, bytes], tmp_path: Path
) -> None:
    names = sorted(photos)[:3]
    for name in names:
        (tmp_path / f"big_{name}").write_bytes(photos[name])
    args = AppArgs.model_validate(
        {"name": app.name, "data_dir": str(app.data_dir), "features": {"phash": {}, "local": {}}}
    )
    report = ingest(tmp_path, args, batch_size=2, progress=False, app_name="test")
    assert (report.stored, report.failed) == (3, []), report.summary()
    stored = client.get("/images", params={"file_name": f"big_{names[0]}"}).json()
    assert stored["features"] == ["phash", "local"]
    r = client.get(f"/search/similar/{stored['image_id']}", params={"feature": "local", "k": 1})
    assert r.json()["results"][0]["file_name"] == names[0]  # the same photo, uploaded


def test_a_trained_descriptor_index_is_adopted_while_serving(
    client: httpx.Client, app: RunningApp, photos: dict[str, bytes]
) -> None:
    import ray

    actor = app.actor("index:local")
    indexes = IndexClient(app.actor("catalog"), {"local": actor}, {})
    result = train_and_adopt(indexes, "local", "l2", "IVF4,PQ16x4", None, 100_000)
    assert result["trained"] and result["sample"] > 1000
    described = ray.get(actor.describe.remote())
    assert described["trained"] and described["nprobe"] == 16
    crop = _crop(photos[BRIDGE], 0.3)
    r = client.post("/search/image", files={"image": crop}, data={"features": "local", "k": 1})
    assert r.status_code == 200 and r.json()["results"][0]["image_id"] == photo_id(photos, BRIDGE)
    ray.get(actor.configure.remote({"nprobe": 2}))  # live, no rebuild
    assert ray.get(actor.describe.remote())["nprobe"] == 2
    assert ray.get(actor.adopt.remote(None, None))["trained"] is False  # back to exact
