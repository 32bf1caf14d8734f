"""The engine without Serve or Ray: real extractors in this process, real indexes behind the
index client's in-process actors; domain errors, never HTTP ones."""

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.ports import LocalExtractor
from extractors import InvalidImage
from extractors.base import FUSED
from index_actors.client import IndexClient
from index_actors.interface import BackendDown, Conflict, InvalidInput, Unavailable, UnknownImage
from index_actors.store import Catalog
from tests.helpers import distinct_uploads, encode, one_upload, reencode

BRIDGE = "Bridge_by_Sander_Klootwijk.jpg"
WINE = "Wine_by_Jakkub_Mede.jpg"


def run(coro: Any) -> Any:
    """Run one engine call (each on a fresh event loop, as a test needs no more)."""
    return asyncio.run(coro)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """phash and colour, in-process, on a fresh data directory."""
    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path)})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    client = IndexClient.local(tmp_path, args.index_specs())
    yield Engine(args, extractors, client)
    for (actor,) in client.shards.values():
        with contextlib.suppress(Exception):  # a store a test closed under its index
            actor._obj.index.close()


def test_add_describe_search_delete(engine: Engine, photos: dict[str, bytes]) -> None:
    added = run(engine.add(photos[BRIDGE], None, BRIDGE, engine.indexed))
    assert added.file_name == BRIDGE and added.features == {"phash": "ok", "color": "ok"}
    run(engine.add(photos[WINE], 7, WINE, engine.indexed))
    info = run(engine.describe(added.image_id))
    assert info.features == ["phash", "color"] and info.file_name == BRIDGE

    found = run(engine.search_image(reencode(photos[BRIDGE], 0.5), 2, None, {}))
    assert [r.image_id for r in found.results] == [added.image_id, 7]
    assert found.results[0].duplicate and set(found.by_feature) == {"phash", "color"}
    similar = run(engine.similar("color", 7, 5, None, {}))
    assert [h.image_id for h in similar.results] == [added.image_id] and similar.partial is None

    run(engine.delete(7))
    with pytest.raises(UnknownImage):
        run(engine.describe(7))
    assert run(engine.client.names([added.image_id, 7])) == {added.image_id: BRIDGE}


def test_bad_input_raises_domain_errors(engine: Engine, photos: dict[str, bytes]) -> None:
    with pytest.raises(InvalidImage) as bad:
        run(engine.add(b"not an image at all", None, None, engine.indexed))
    assert bad.value.status == 415
    with pytest.raises(InvalidInput, match="k must be between"):
        run(engine.search_image(photos[WINE], 0, None, {}))
    with pytest.raises(InvalidInput, match="unknown or disabled"):
        engine.features("phash,sift")
    with pytest.raises(InvalidInput, match="file_name"):
        run(engine.add(photos[WINE], None, "x" * 300, engine.indexed))
    with pytest.raises(Unavailable, match="clip"):
        run(engine.text_hits("a bridge", 3, None, {}))
    run(engine.add(photos[WINE], 1, "taken.jpg", engine.indexed))
    with pytest.raises(Conflict, match="already belongs to image 1"):
        run(engine.add(photos[BRIDGE], 2, "taken.jpg", engine.indexed))
    assert run(engine.client.names([2])) == {}


def test_a_failed_write_leaves_no_new_image_half_visible(
    engine: Engine, photos: dict[str, bytes]
) -> None:
    """The colour index's store is closed under it: its write fails for real, and the new
    image is taken out of phash and the catalog again; an existing one keeps its features."""
    run(engine.add(photos[WINE], 1, WINE, engine.indexed))
    color = engine.client.shards["color"][0]._obj.index  # type: ignore[attr-defined]
    color.store.env.close()
    with pytest.raises(BackendDown, match="not stored, retry"):
        run(engine.add(photos[BRIDGE], 2, BRIDGE, engine.indexed))
    assert run(engine.client.names([1, 2])) == {1: WINE}
    assert run(engine.client.has("phash", [1, 2])) == [1]
    with pytest.raises(BackendDown, match="image 1 was not stored completely"):
        run(engine.add(photos[BRIDGE], 1, WINE, engine.indexed))
    assert run(engine.client.names([1])) == {1: WINE}


def test_a_bad_upload_is_refused_from_its_header_before_any_extractor(
    engine: Engine, photos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adds and searches by image: a file that is not an image, an empty one, one over the
    pixel limit get their 415 / 400 / 413 without an extractor being asked (under load that
    wait was seconds); a good one still reaches them."""
    asked: list[str] = []
    extract = LocalExtractor.extract

    async def counted(self: LocalExtractor, data: bytes, query: Any) -> Any:
        asked.append(self.name)
        return await extract(self, data, query)

    monkeypatch.setattr(LocalExtractor, "extract", counted)
    big = Image.new("RGB", (3000, 2000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    limited = engine.args.model_copy(update={"max_pixels": 5_000_000})
    monkeypatch.setattr(engine, "args", limited)
    for data, status in ((b"GIF89 but not", 415), (b"", 400), (buf.getvalue(), 413)):
        with pytest.raises(InvalidImage) as bad:
            run(engine.add(data, None, None, engine.indexed))
        assert bad.value.status == status
        with pytest.raises(InvalidImage) as bad:
            run(engine.search_image(data, 5, None, {}))
        assert bad.value.status == status
    assert asked == []
    run(engine.search_image(photos[WINE], 5, None, {}))
    assert sorted(asked) == ["color", "phash"]


def test_searchable_drops_queries_with_nothing_to_match() -> None:
    empty_text = np.frombuffer(b"{}", np.uint8)
    with pytest.raises(InvalidInput, match="no text found"):
        Engine.searchable({"ocr": empty_text})
    phash = np.zeros((1, 72), np.uint8)
    assert list(Engine.searchable({"ocr": empty_text, "phash": phash})) == ["phash"]


def test_the_http_app_over_the_engine_documents_typed_schemas(
    engine: Engine, photos: dict[str, bytes]
) -> None:
    """The routers in-process (no Serve): /openapi.json shows the answers' models and the
    kinds' options as form fields, FastAPI's 422 names the field, and a domain error maps
    to its status."""
    from fastapi.testclient import TestClient

    from deployments.ingress import create_app

    client = TestClient(create_app(engine, 2 * 1024 * 1024))
    spec = client.get("/openapi.json").json()
    assert {"SearchResult", "Added", "ImageInfo", "Health"} <= set(spec["components"]["schemas"])
    form = spec["paths"]["/search/image"]["post"]["requestBody"]["content"]
    fields = next(iter(form.values()))["schema"]
    fields = spec["components"]["schemas"][fields["$ref"].split("/")[-1]]["properties"]
    assert {"image", "k", "aqe_n", "k_clusters"} <= set(fields)

    r = client.post("/images", files={"image": ("w.jpg", photos[WINE])}, data={"image_id": "x"})
    assert r.status_code == 422 and "image_id must be an integer" in r.json()["detail"]
    r = client.post("/search/image", files={"image": ("w.jpg", photos[WINE])}, data={"aqe_n": 500})
    assert r.status_code == 422 and "aqe_n" in r.json()["detail"]
    assert client.get("/images/12345").status_code == 404
    r = client.post("/images", files={"image": ("w.jpg", photos[WINE])}, data={"image_id": 5})
    assert r.status_code == 200 and r.json()["features"] == {"phash": "ok", "color": "ok"}
    assert client.get("/images/5").json()["file_name"] == "w.jpg"


def test_docs_work_offline(engine: Engine) -> None:
    """/docs loads Swagger UI from the app (a package's files), not from a CDN, and its
    script, styles and the OpenAPI document it reads are served."""
    from fastapi.testclient import TestClient

    from deployments.ingress import create_app

    client = TestClient(create_app(engine, 2 * 1024 * 1024))
    page = client.get("/docs")
    assert page.status_code == 200 and "http" not in page.text.split("<body>")[0].lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in page.text
        r = client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    assert "cdn" not in page.text and "'/openapi.json'" in page.text
    assert client.get("/openapi.json").json()["paths"]["/search/image"]
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/docs-assets/redoc.standalone.js" in redoc.text
    assert "fonts.googleapis" not in redoc.text and "cdn" not in redoc.text
    assert client.get("/docs-assets/redoc.standalone.js").status_code == 200


def test_http_edges_empty_fields_booleans_and_a_missing_phash_index(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """An empty query or JSON value is unset, as the original services read them; JSON true
    is not an id; duplicate searches over a phash whose index is not open answer 503."""
    from fastapi.testclient import TestClient

    from deployments.ingress import create_app
    from index_actors.client import IndexSpec

    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path)})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    specs = {"phash": IndexSpec("binary", "its index is not open"), **args.index_specs(["color"])}
    engine = Engine(args, extractors, IndexClient.local(tmp_path, specs))
    client = TestClient(create_app(engine, 2 * 1024 * 1024))
    upload = {"image": ("w.jpg", photos[WINE])}
    assert client.post(
        "/images", files=upload, data={"image_id": 1, "features": "color"}
    ).is_success
    assert client.post(
        "/images", files=upload, data={"image_id": 2, "features": "color"}
    ).is_success

    r = client.get("/search/similar/1", params={"feature": "color", "k": "", "threshold": ""})
    assert r.status_code == 200 and [h["image_id"] for h in r.json()["results"]] == [2], r.text
    body = {"image_id": 1, "k": "", "distance_threshold": "", "aqe_n": ""}
    r = client.post("/color_get_similar_images_by_id", json=body)
    assert r.status_code == 200 and [h["image_id"] for h in r.json()] == [1, 2], r.text
    r = client.post("/color_get_similar_images_by_id", json={"image_id": True})
    assert r.status_code == 422, r.text

    r = client.post("/search/image", files=upload, data={"duplicates_only": 1})
    assert r.status_code == 503 and "not open" in r.json()["detail"], r.text
    r = client.post("/reverse_search", files=upload, data={"find_duplicate": 1})
    assert r.status_code == 503 and "not open" in r.json()["detail"], r.text


def test_each_search_starts_as_its_query_is_ready_and_answers_as_before(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """A search by image searches each feature's index as soon as that feature's query is
    computed: phash's search runs while local features are still extracting. The answer is
    the two steps' (every query, then every search): the same lists, the same fusion; and
    the errors keep their order (nothing to match for local alone, a bad image first).
    Fused with phash, local features read the query at their fused bound (here a small
    one), alone at full size."""
    features = {"phash": {}, "color": {}, "local": {"options": {"fused_query_max_area": 40_000}}}
    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path), "features": features})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    engine = Engine(args, extractors, IndexClient.local(tmp_path, args.index_specs()))
    for i, (name, data) in enumerate(sorted(photos.items()), start=1):
        assert run(engine.add(data, i, name, engine.indexed)).features["local"] == "ok"
    names = engine.visual
    options = {n: engine.options(n, {}) for n in names}

    async def two_steps(data: bytes, names: list[str] = names) -> Any:
        queries = await engine.queries(data, names, engine.query_mode(names))
        lists = await engine.search(queries, args.fusion.candidates, {}, options)
        return await engine.fused(lists, 20, args.fusion.duplicate_threshold)

    for data in (reencode(photos[BRIDGE], 0.5), reencode(photos[WINE], mirror=True)):
        want = run(two_steps(data))
        assert run(engine.search_image(data, 20, None, {})) == want
        assert set(want.by_feature) == {"phash", "color", "local"}
        alone = run(engine.search_image(data, 20, "local", {}))
        assert alone == run(two_steps(data, ["local"]))
        assert alone.by_feature["local"] != want.by_feature["local"]  # the bound tells
    assert engine.query_mode(["phash", "local"]) == engine.query_mode(["global", "local"])
    assert engine.query_mode(["phash", "local"]) == FUSED
    assert engine.query_mode(["local"]) is True and engine.query_mode(["phash"]) is True

    # local's extraction waits until phash's index has been asked: no deadlock means
    # phash's search did not wait for it.
    asked = asyncio.Event()
    search, port = engine.client.search, engine.extractors["local"]

    async def noting(feature: str, *a: Any, **kw: Any) -> Any:
        if feature == "phash":
            asked.set()
        return await search(feature, *a, **kw)

    class Late:
        async def extract(self, data: bytes, query: bool) -> Any:
            await asyncio.wait_for(asked.wait(), 10)
            return await port.extract(data, query)

    engine.client.search = noting  # type: ignore[method-assign]
    engine.extractors["local"] = Late()  # type: ignore[assignment]
    found = run(engine.search_image(photos[WINE], 5, None, {}))
    assert found.results[0].file_name == WINE and "local" in found.by_feature

    flat = encode(Image.new("RGB", (300, 200), (90, 90, 90)), "PNG")
    found = run(engine.search_image(flat, 5, None, {}))
    assert "local" not in found.by_feature and "phash" in found.by_feature
    with pytest.raises(InvalidInput, match="no keypoints"):
        run(engine.search_image(flat, 5, "local", {}))
    with pytest.raises(InvalidImage):
        run(engine.search_image(b"not an image", 5, None, {}))


def _stored(engine: Engine) -> dict[str, dict[int, bytes]]:
    """Every stored row of every feature: feature -> id -> bytes."""

    async def export(actor: Any) -> Any:
        return await actor.export.remote(-1, 10**6)

    out = {}
    for f, (actor,) in engine.client.shards.items():
        ids, rows = run(export(actor))
        out[f] = {i: bytes(np.asarray(r)) for i, r in zip(ids, rows, strict=True)}
    return out


def test_concurrent_writes_of_one_image_end_in_one_upload(
    engine: Engine, photos: dict[str, bytes]
) -> None:
    """20 re-adds of one id with different photos at once, then re-adds and deletes mixed:
    the image ends with every feature from one upload, or in no index at all."""
    uploads = distinct_uploads(photos, 20)
    refs = [100 + j for j in range(len(uploads))]
    for ref, data in zip(refs, uploads, strict=True):
        run(engine.add(data, ref, None, engine.indexed))

    async def at_once(calls: list[Any]) -> list[Any]:
        return await asyncio.gather(*calls, return_exceptions=True)

    got = run(at_once([engine.add(d, 7, None, engine.indexed) for d in uploads]))
    assert not [g for g in got if isinstance(g, BaseException)]
    assert len(one_upload(_stored(engine), 7, refs)) >= 1

    mixed = [
        engine.delete(8) if k % 2 else engine.add(uploads[k], 8, None, engine.indexed)
        for k in range(10)
    ]
    got = run(at_once(mixed))
    assert all(isinstance(g, UnknownImage) for g in got if isinstance(g, BaseException))
    rows = _stored(engine)
    if run(engine.client.names([8])):
        assert len(one_upload(rows, 8, refs)) >= 1
    else:
        assert all(8 not in by_id for by_id in rows.values())


def test_a_write_waits_for_another_writer_of_the_same_image(tmp_path: Path) -> None:
    """The catalog's holds: one writer per id, others asked to wait; a dead writer's hold
    lapses; a name resolves to its id's hold."""
    catalog = Catalog(tmp_path / "catalog")
    (got,) = catalog.claim([("a.jpg", None)], False, "w1", 60)
    assert got == (1, "a.jpg", False)
    assert catalog.claim([("a.jpg", None), ("b.jpg", None)], False, "w2", 60) == [
        None,
        (2, "b.jpg", False),
    ]
    assert not catalog.hold([1], "w2", 60) and catalog.hold([1], "w1", 60)
    catalog.release([1], "w1")
    assert catalog.claim([(None, 1)], False, "w2", 60) == [(1, "a.jpg", True)]
    assert catalog.claim([("x" * 600, None)], False, "w3", 60)[0].startswith("file name is over")
    assert catalog.claim([(None, 1)], False, "w3", 0.0) == [None]  # w2 holds it, 60 s
    assert catalog.hold([2], "w3", 0.0) is False  # w2 holds 2 too
    catalog.release([1, 2], "w2")
    assert catalog.hold([1, 2], "w3", 0.0)  # a hold of 0 s lapses at once: a dead writer
    assert catalog.claim([(None, 1)], False, "w4", 60) == [(1, "a.jpg", True)]
    catalog.close()
