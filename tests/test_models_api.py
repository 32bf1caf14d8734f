"""Global features and CLIP through the real graph: native and seed routes, training, ingest."""

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray

from deployments.config import AppArgs
from deployments.ingest import ingest
from index_actors.client import IndexClient
from scripts.train_index import run as train_and_adopt
from tests.conftest import RunningApp, running_replicas
from tests.helpers import photo_id, reencode, store_photos, tiny_clip_dir, transformed

pytestmark = pytest.mark.timeout(300)

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"


@pytest.fixture(scope="module")
def app_overrides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """phash beside the two models: global on its packaged weights, a tiny random CLIP."""
    clip_dir = tiny_clip_dir(tmp_path_factory.mktemp("clip"))
    return {
        "features": {
            "phash": {},
            "global": {},
            "clip": {"options": {"model": f"local-dir:{clip_dir}"}},
        }
    }


@pytest.fixture(scope="module")
def client(app: RunningApp, photos: dict[str, bytes]) -> httpx.Client:
    """A client of an app that holds every test photo, with ids 1..n in name order."""
    # serve.yaml lets extract_clip scale to no replica (min_replicas 0); with its weights
    # there, the ingress starts one as it starts: running before any request.
    assert running_replicas("extract_clip", at_least=1, within_s=120) == 1
    c = httpx.Client(base_url=app.url, timeout=60)
    store_photos(c, photos, {"phash": "ok", "global": "ok", "clip": "ok"})
    return c


def test_health_shows_models_and_their_indexes(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["extractors"]["global"]["dim"] == 1280
    assert body["extractors"]["clip"]["dim"] == 32
    assert body["extractors"]["clip"]["device"] == "cpu"
    assert body["indexes"]["global"] == {
        "count": 8,
        "trained": False,
        "training": False,
        "whitened": False,
        "nprobe": 32,
        "rerank": 400,
        "aqe_n": 0,
        "aqe_alpha": 3.0,
    }


def test_fused_image_search_uses_both_models(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    want = photo_id(photos, BRIDGE)
    for kind, copy in transformed(photos[BRIDGE]).items():
        r = client.post("/search/image", files={"image": ("q.jpg", copy)}, data={"k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["by_feature"]) == {"phash", "global", "clip"}
        assert body["by_feature"]["global"][0]["image_id"] == want, kind
        assert body["results"][0]["image_id"] == want, kind


def test_similar_by_id_with_query_expansion(client: httpx.Client, photos: dict[str, bytes]) -> None:
    i = photo_id(photos, BRIDGE)
    plain = client.get(f"/search/similar/{i}", params={"feature": "global", "k": 7}).json()
    aqe = client.get(
        f"/search/similar/{i}", params={"feature": "global", "k": 7, "aqe_n": 3, "aqe_alpha": 1}
    ).json()
    assert len(plain["results"]) == len(aqe["results"]) == 7
    assert i not in {r["image_id"] for r in aqe["results"]}
    assert plain != aqe
    for params in ({"aqe_n": "many"}, {"aqe_n": 1000}, {"aqe_alpha": -1}):
        r = client.get(f"/search/similar/{i}", params={"feature": "global", **params})
        assert r.status_code == 422, r.text


def test_text_search(client: httpx.Client) -> None:
    r = client.get("/search/text", params={"q": "a bridge over a river", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    # CLIP is the only text source here: the fused order is its order.
    assert len(body["results"]) == 5 and set(body["by_feature"]) == {"clip"}
    clip = body["by_feature"]["clip"]
    assert [r["image_id"] for r in body["results"]] == [r["image_id"] for r in clip]
    assert all(r["file_name"].endswith(".jpg") for r in body["results"])
    distances = [r["distance"] for r in clip]
    assert distances == sorted(distances)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": ""}, "empty"),
        ({"q": "   "}, "empty"),
        ({"q": "x" * 10_000}, "10000 characters"),
        ({"q": "bridge", "k": 0}, "k must be"),
    ],
)
def test_bad_text_queries(client: httpx.Client, params: dict, message: str) -> None:
    r = client.get("/search/text", params=params)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_clip_reads_queries_without_words(client: httpx.Client) -> None:
    # No text source here: the word rules of the text index do not apply to CLIP.
    for q in ("?!", "🌉", " ".join(f"w{i}" for i in range(80))):
        r = client.get("/search/text", params={"q": q, "k": 2})
        assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text


def test_seed_routes(client: httpx.Client, photos: dict[str, bytes]) -> None:
    i = photo_id(photos, BRIDGE)
    for svc in ("global_features", "image_text_features"):
        r = client.post(f"/{svc}_get_similar_images_by_id", json={"image_id": i, "k": 3})
        assert r.status_code == 200 and len(r.json()) == 3, r.text
        assert set(r.json()[0]) == {"image_id", "distance", "file_name"}
        r = client.post(
            f"/{svc}_get_similar_images_by_id", json={"image_id": i, "k": 3, "aqe_n": 2}
        )
        assert r.status_code == 200, r.text
        r = client.post(
            f"/{svc}_get_similar_images_by_image_buffer",
            files={"image": ("q.jpg", reencode(photos[BRIDGE], scale=0.5))},
            data={"k": 2},
        )
        assert r.status_code == 200, r.text
        if svc == "global_features":
            assert r.json()[0]["image_id"] == i
    r = client.post("/image_text_features_get_similar_images_by_text", json={"text": "a", "k": 4})
    assert r.status_code == 200 and len(r.json()) == 4, r.text
    for body in ({"text": ""}, {"k": 3}, {"text": "a", "k": 3, "distance_threshold": 0.5}):
        r = client.post("/image_text_features_get_similar_images_by_text", json=body)
        assert r.status_code == 422, r.text
    r = client.post(
        "/image_text_features_get_similar_images_by_text",
        json={"text": "a", "distance_threshold": 4.0},  # squared L2 of unit vectors: all
    )
    assert r.status_code == 200 and len(r.json()) == 8


def test_seed_calculate_and_delete_one_model_feature(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    data = reencode(photos[BRIDGE], scale=0.6)
    r = client.post("/calculate_global_features", files={"image": data}, data={"image_id": 500})
    assert r.status_code == 200, r.text
    assert client.get("/images/500").json()["features"] == ["global"]
    hits = client.post("/global_features_get_similar_images_by_id", json={"image_id": 500, "k": 2})
    assert [h["image_id"] for h in hits.json()] == [500, photo_id(photos, BRIDGE)]
    assert client.post("/delete_global_features", json={"image_id": 500}).status_code == 200
    r = client.post("/global_features_get_similar_images_by_id", json={"image_id": 500, "k": 1})
    assert r.status_code == 404
    assert client.post("/delete_all_image_features", json={"image_id": 500}).status_code == 200


def test_reverse_search_lists_model_sources(client: httpx.Client, photos: dict[str, bytes]) -> None:
    r = client.post("/reverse_search", files={"image": reencode(photos[BRIDGE], quality=40)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"phash_res", "global_features_res", "image_text_features_res"} <= set(body)
    assert body["unified_res"][0]["image_id"] == photo_id(photos, BRIDGE)


def test_train_whitened_ivf_index_while_serving(
    client: httpx.Client, app: RunningApp, photos: dict[str, bytes]
) -> None:
    """scripts/train_index.py's path: sample, train here, the actor adopts; searches go on."""
    actor = app.actor("index:global")
    indexes = IndexClient(app.actor("catalog"), {"global": actor}, {})
    result = train_and_adopt(indexes, "global", "ip", "IVF2,Flat", 4, 1000)
    assert result["trained"] and result["width"] == 4 and result["count"] == 8
    health = client.get("/health").json()["indexes"]["global"]
    assert health["trained"] and health["whitened"]
    want = photo_id(photos, BRIDGE)
    r = client.post(
        "/search/image",
        files={"image": ("q.jpg", reencode(photos[BRIDGE], quality=40))},
        data={"features": "global", "k": 1},
    )
    assert r.json()["results"][0]["image_id"] == want
    # Adds after the switch land in the trained index; a restart keeps the artefacts.
    r = client.post("/images", files={"image": ("x.jpg", photos[BRIDGE])}, data={"image_id": 77})
    assert r.status_code == 200
    ray.kill(actor, no_restart=False)
    health = client.get("/health").json()["indexes"]["global"]
    assert health["count"] == 9 and health["trained"] and health["whitened"]
    assert ray.get(actor.adopt.remote(None, None))["trained"] is False  # back to Flat
    client.delete("/images/77")


def test_ray_data_ingest_computes_model_features(
    client: httpx.Client, app: RunningApp, photos: dict[str, bytes], tmp_path: Path
) -> None:
    for name in list(photos)[:3]:
        (tmp_path / f"copy_{name}").write_bytes(reencode(photos[name], scale=0.7))
    args = AppArgs.model_validate(
        {
            "name": app.name,
            "data_dir": str(app.data_dir),
            "features": {"phash": {}, "global": {}, "clip": {"enabled": False}},
        }
    )
    try:
        report = ingest(tmp_path, args, batch_size=2, progress=False, app_name="test")
        assert (report.stored, report.failed) == (3, []), report.summary()
        stored = client.get("/images", params={"file_name": f"copy_{next(iter(photos))}"}).json()
        assert stored["features"] == ["phash", "global"]
        hits = client.get(f"/search/similar/{stored['image_id']}", params={"feature": "global"})
        assert hits.json()["results"][0]["file_name"] == next(iter(photos))
    finally:  # the other tests count the module's own images
        for name in list(photos)[:3]:
            found = client.get("/images", params={"file_name": f"copy_{name}"})
            if found.status_code == 200:
                client.delete(f"/images/{found.json()['image_id']}")


def test_live_index_settings_change_without_a_new_actor(ray_session: int, tmp_path: Path) -> None:
    """What a redeploy with other nprobe / aqe settings does: the same actor, new settings;
    another fixed option (the metric) replaces the actor, which rebuilds from LMDB. On an
    index of its own: the app's actors stay as the other tests use them."""
    from index_actors.client import index_actor
    from tests.conftest import kill_actors

    name = f"live{uuid.uuid4().hex[:8]}"
    args = (name, "global", "vector", str(tmp_path), 8)
    try:
        before = index_actor(*args, {"metric": "ip"})
        vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
        ray.get(before.add.remote([1, 2, 3], vectors / np.linalg.norm(vectors, axis=1)[:, None]))
        pid = ray.get(before.pid.remote())
        same = index_actor(*args, {"metric": "ip", "nprobe": 4, "aqe_n": 2})
        assert ray.get(same.pid.remote()) == pid
        described = ray.get(same.describe.remote())
        assert (described["nprobe"], described["aqe_n"]) == (4, 2)
        replaced = index_actor(*args, {"metric": "l2"})
        assert ray.get(replaced.pid.remote()) != pid
        assert ray.get(replaced.count.remote()) == 3
    finally:
        kill_actors(name)
