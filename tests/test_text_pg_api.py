"""The text features in PostgreSQL through the real graph: a real server (started here in a
folder), down when the app starts, up, down mid-run, up again. Text search answers 503 while
it is down (never the embedded store instead); the other searches go on."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from scripts.pgserver import NoPostgres, pg_server, start, stop
from tests.conftest import RunningApp
from tests.helpers import encode
from tests.test_text_api import PARCEL, text_image

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pg() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL server's folder and DSN; stopped when the module starts."""
    folder = Path(tempfile.mkdtemp(prefix="pg-api-"))
    os.chmod(folder, 0o755)  # the server runs as the postgres user when we are root
    with pg_server(folder / "pg") as dsn:
        stop(folder / "pg")
        try:
            yield folder / "pg", dsn
        finally:
            with contextlib.suppress(NoPostgres):  # running again for pg_server's own stop
                start(folder / "pg")


@pytest.fixture(scope="module")
def app_overrides(pg: tuple[Path, str]) -> dict[str, object]:
    return {"text_dsn": pg[1], "features": {"phash": {}, "ocr": {}}}


@pytest.fixture(scope="module")
def client(app: RunningApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, timeout=120) as c:
        yield c


def _upload(client: httpx.Client, data: bytes, image_id: int, features: str = "") -> httpx.Response:
    fields: dict[str, object] = {"image_id": image_id}
    if features:
        fields["features"] = features
    return client.post("/images", files={"image": (f"{image_id}.jpg", data)}, data=fields)


def _search_text(client: httpx.Client, q: str) -> httpx.Response:
    return client.get("/search/text", params={"q": q})


def test_down_at_start_then_up_then_down_mid_run_then_up(
    client: httpx.Client, pg: tuple[Path, str], app: RunningApp
) -> None:
    """One story (its steps need the server's state of the step before): down when the app
    starts, then up, down while it runs, and up again."""
    folder, dsn = pg
    health = client.get("/health").json()
    assert health["status"] == "degraded" and "PostgreSQL" in health["indexes"]["ocr"]["error"]
    r = _search_text(client, "parcel")
    assert r.status_code == 503 and "PostgreSQL is unreachable" in r.json()["detail"], r.text
    photo = text_image("Lighthouse")
    assert _upload(client, photo, 1, "phash").status_code == 200  # the rest works
    r = client.post("/search/image", files={"image": ("q.jpg", photo)})
    assert r.status_code == 200 and r.json()["results"][0]["image_id"] == 1
    r = _upload(client, text_image(PARCEL), 2)  # needs the text store: not acknowledged
    assert r.status_code == 503 and "retry" in r.json()["detail"], r.text
    # ... and not half visible either: its phash went in, and out again.
    assert client.get("/images/2").status_code == 404
    r = client.post("/search/image", files={"image": ("q.jpg", text_image(PARCEL))})
    assert 2 not in {x["image_id"] for x in r.json()["results"]}
    r = client.post("/images", files={"image": ("x.jpg", photo)})  # an id of its own: same
    assert r.status_code == 503 and client.get("/health").json()["images"] == 1

    start(folder)
    r = _upload(client, text_image(PARCEL), 2)  # the retry of the refused upload
    assert r.status_code == 200 and r.json()["features"] == {"phash": "ok", "ocr": "ok"}
    hits = _search_text(client, "recieve").json()["results"]
    assert hits[0]["image_id"] == 2 and "receive" in client.get("/images/2").json()["text"].lower()
    with psycopg.connect(dsn) as db:  # in tables of this app's own
        got = db.execute(f"SELECT image_id FROM {app.name}_ocr_docs").fetchall()
    assert got == [(2,)]

    stop(folder)
    r = _search_text(client, "parcel")
    assert r.status_code == 503 and "PostgreSQL" in r.json()["detail"], r.text
    r = client.post("/search/image", files={"image": ("q.png", encode(_blank(), "PNG"))})
    assert r.status_code == 200  # phash still answers

    start(folder)
    hits = _search_text(client, "parcel").json()["results"]
    assert [h["image_id"] for h in hits] == [2]  # the acknowledged add survived
    assert client.get("/health").json()["status"] == "ok"


def _blank():  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image.new("RGB", (200, 100), (200, 30, 30))
