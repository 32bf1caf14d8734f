"""Models that cannot run: the app starts, says why, and keeps every other feature working."""

import asyncio
import socket
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import RunningApp, kill_actors, running_replicas

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    """A wrong global model name, and CLIP's default weights, which this machine lacks."""
    return {"features": {"phash": {}, "global": {"options": {"model": "nope"}}, "clip": {}}}


@pytest.fixture(scope="module")
def client(app: RunningApp, photos: dict[str, bytes]) -> httpx.Client:
    """A client of the app with the first photo stored as image 1 (phash: what it can)."""
    c = httpx.Client(base_url=app.url, timeout=60)
    image = {"image": ("a.jpg", next(iter(photos.values())))}
    assert c.post("/images", files=image, data={"image_id": 1}).status_code == 200
    return c


def test_health_says_what_is_missing_and_how_to_fix_it(
    app: RunningApp, client: httpx.Client
) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"  # a known state of this install, not a fault
    ext = body["extractors"]
    assert ext["phash"]["available"]
    assert not ext["global"]["available"] and "timm has no model 'nope'" in ext["global"]["reason"]
    assert not ext["clip"]["available"]
    assert "scripts/fetch_models.py clip" in ext["clip"]["reason"]
    assert "no index" in body["indexes"]["global"]["error"]
    # No actor for CLIP's index while it holds nothing (~75 MiB): it opens with the weights.
    assert "fetch_models.py clip" in body["indexes"]["clip"]["error"]
    with pytest.raises(ValueError):
        app.actor("index:clip")
    assert app.actor("index:phash") is not None


def test_uploads_store_what_can_be_computed(client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = next(iter(photos.values()))
    r = client.post("/images", files={"image": ("a.jpg", data)}, data={"image_id": 1})
    assert r.status_code == 200, r.text
    status = r.json()["features"]
    assert status["phash"] == "ok" and status["clip"].startswith("unavailable: clip (ViT-B-16)")
    assert status["global"].startswith("unavailable: ")  # no index: the model is unknown
    assert client.get("/images/1").json()["features"] == ["phash"]
    r = client.post("/calculate_all_image_features", files={"image": data}, data={"image_id": 2})
    assert r.status_code == 200 and r.json()[0] == {"status": "fulfilled", "value": ""}


def test_asking_for_an_unavailable_model_is_503_and_stores_nothing(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    data = next(iter(photos.values()))
    before = client.get("/health").json()["images"]
    r = client.post("/images", files={"image": data}, data={"features": "global"})
    assert r.status_code == 503 and "timm has no model" in r.json()["detail"]
    r = client.post("/images", files={"image": data}, data={"features": "clip"})
    assert r.status_code == 503 and "fetch_models.py clip" in r.json()["detail"]
    r = client.post("/calculate_image_text_features", files={"image": data}, data={"image_id": 9})
    assert r.status_code == 503
    assert client.get("/health").json()["images"] == before


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/search/text", {"params": {"q": "a bridge"}}),
        ("post", "/image_text_features_get_similar_images_by_text", {"json": {"text": "a"}}),
        ("post", "/global_features_get_similar_images_by_id", {"json": {"image_id": 1}}),
        ("get", "/search/similar/1", {"params": {"feature": "global"}}),
    ],
)
def test_searches_that_need_a_missing_model_are_503(
    client: httpx.Client, method: str, path: str, kwargs: dict
) -> None:
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "fetch_models.py clip" in detail or "no model" in detail
    assert "Traceback" not in detail and "ray::" not in detail  # the reason, not Ray's dump


def test_other_searches_still_work(client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = next(iter(photos.values()))
    r = client.post("/search/image", files={"image": data})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["image_id"] in (1, 2)
    assert set(r.json()["by_feature"]) == {"phash"}


def test_a_model_without_weights_costs_no_torch_and_no_process(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """CLIP's weights are missing: after adds, searches and /health its deployment runs no
    replica (serve.yaml's min_replicas 0; the ingress answers for it). Global's model does
    not exist: its deployment keeps the replica serve.yaml asks for, which never imports
    torch (~0.5 GiB in that process for nothing)."""
    import ray
    from ray.util import list_named_actors

    data = next(iter(photos.values()))
    again = client.post("/images", files={"image": ("a.jpg", data)}, data={"image_id": 1})
    assert again.status_code == 200  # a re-add: the other tests count the images
    assert client.post("/search/image", files={"image": data}).status_code == 200
    assert client.get("/search/text", params={"q": "a bridge"}).status_code == 503
    assert not client.get("/health").json()["extractors"]["clip"]["available"]
    assert running_replicas("extract_clip") == 0

    def loaded(_: object) -> list[str]:
        import sys

        return [m for m in ("torch", "timm", "open_clip") if m in sys.modules]

    replicas = [
        a["name"]
        for a in list_named_actors(all_namespaces=True)
        if "extract_global" in a["name"] and a["name"].startswith("SERVE_REPLICA")
    ]
    assert replicas, list_named_actors(all_namespaces=True)
    for name in replicas:
        handle = ray.get_actor(name, namespace="serve")
        assert ray.get(handle.__ray_call__.remote(loaded)) == []


#: What ``models_without_weights`` says of CLIP here.
WHY = {"clip": "clip's weights are missing: python scripts/fetch_models.py clip"}


def _running(role: str) -> int:
    from ray.util import list_named_actors

    return sum(a["name"].startswith(role) for a in list_named_actors(all_namespaces=True))


def _gone(role: str) -> bool:
    deadline = time.monotonic() + 30
    while _running(role) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _running(role)


@pytest.mark.parametrize("shards", [1, 2])
def test_the_index_of_a_model_without_weights_starts_only_holding_images(
    ray_session: int, tmp_path: Path, shards: int
) -> None:
    """A model whose weights are missing (``dormant``) gets no index actor while its index
    holds nothing: a fresh one is never started; an empty one opened before is stopped and
    marked dormant, its layout kept for when the weights are back. One that holds images
    stays open, and a delete reaches it."""
    import ray

    from deployments.config import AppArgs
    from index_actors.client import IndexClient, actor_name

    name = f"dorm{uuid.uuid4().hex[:8]}"
    args = AppArgs(
        name=name,
        data_dir=str(tmp_path / "data"),
        features={"phash": {}, "clip": {}},
        shards=shards,
    )
    data, specs = str(args.data_path()), args.index_specs()
    role = actor_name(name, "index:clip")
    try:
        fresh = IndexClient.open(name, data, specs, dormant=WHY)
        assert fresh.features == ["phash"] and fresh.missing == WHY
        assert not _running(role)
        catalog = fresh.catalog
        assert ray.get(catalog.layout.remote("clip")) is None

        opened = IndexClient.open(name, data, specs)  # the weights came, nothing was stored
        assert opened.features == ["phash", "clip"] and _running(role) == shards
        layout = ray.get(catalog.layout.remote("clip"))
        again = IndexClient.open(name, data, specs, dormant=WHY)  # and went again
        assert again.missing == WHY and _gone(role)
        assert ray.get(catalog.dormant.remote("clip"))
        assert ray.get(catalog.layout.remote("clip")) == layout  # its shards' nodes kept
        assert IndexClient.open(name, data, specs, dormant=WHY).missing == WHY
        assert not _running(role)  # marked dormant: not even started to be counted

        opened = IndexClient.open(name, data, specs)
        assert _running(role) == shards and not ray.get(catalog.dormant.remote("clip"))
        vectors = {"phash": np.zeros((1, 72), np.uint8), "clip": np.ones((1, 512), np.float32)}
        (stored,) = asyncio.run(opened.store([("a.jpg", None)], vectors))
        assert stored.ok and stored.image_id is not None
        holding = IndexClient.open(name, data, specs, dormant=WHY)
        assert holding.features == ["phash", "clip"] and holding.missing == {}
        asyncio.run(holding.delete(stored.image_id))
        assert sum(ray.get([a.count.remote() for a in holding.shards["clip"]])) == 0
    finally:
        kill_actors(name)


def test_an_index_that_cannot_count_is_kept(ray_session: int, tmp_path: Path) -> None:
    """The captioner's words in PostgreSQL, which is down: its index cannot say it is
    empty, so it stays open (and says why it fails) rather than being taken for empty."""
    from deployments.config import AppArgs
    from index_actors.client import IndexClient

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"dorm{uuid.uuid4().hex[:8]}"
    args = AppArgs(
        name=name,
        data_dir=str(tmp_path / "data"),
        features={"phash": {}, "caption": {}},
        text_dsn=f"host=127.0.0.1 port={port} dbname=none connect_timeout=1",
    )
    data, specs = str(args.data_path()), args.index_specs()
    why = {"caption": "the captioner's weights are missing"}
    try:
        assert "caption" in IndexClient.open(name, data, specs).features
        kept = IndexClient.open(name, data, specs, dormant=why)
        assert kept.features == ["phash", "caption"] and kept.missing == {}
    finally:
        kill_actors(name)
