"""API keys, Ray-free: the HTTP app (``create_app``) over an in-process engine with a key
file, the start-up rule for exposed hosts, and the scripts' key check."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments import auth, routes_native, routes_seed
from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.ingress import create_app
from deployments.ports import LocalExtractor
from index_actors.client import IndexClient

READ_KEY = "r-3f9a6c1e0b7d4a2f"
WRITE_KEY = "w-8e2b5d7c9a1f3e60"
KEYS = f"""# the gallery reads
read:{READ_KEY}

write:{WRITE_KEY}   # the uploader
"""
WINE = "Wine_by_Jakkub_Mede.jpg"
#: The app's own routes, which need no key: the page's shell and files, and the docs.
SHELL = {"/", "/web", "/docs", "/redoc", "/docs-assets", "/openapi.json"}


@contextlib.contextmanager
def served(tmp_path: Path, **settings: object) -> Iterator[TestClient]:
    """The HTTP app over phash and colour in-process, with ``settings`` as app args."""
    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path / "data"), **settings})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    client = IndexClient.local(tmp_path / "data", args.index_specs())
    try:
        yield TestClient(create_app(Engine(args, extractors, client), 2 * 1024 * 1024))
    finally:
        for (actor,) in client.shards.values():
            with contextlib.suppress(Exception):
                actor._obj.index.close()


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A key file with a read and a write key (and no override from the environment)."""
    monkeypatch.delenv(auth.ENV_FILE, raising=False)
    path = tmp_path / "api-keys"
    path.write_text(KEYS)
    return path


@pytest.fixture
def app(tmp_path: Path, key_file: Path) -> Iterator[TestClient]:
    """The app with the key file."""
    with served(tmp_path, api_keys_file=str(key_file)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_routes() -> list[auth.KeyedRoute]:
    """Every route of the API's routers (those in /docs and any left out of it), each one
    that checks keys."""
    routes = [*routes_native.router.routes, *routes_seed.router.routes]
    keyed = [r for r in routes if isinstance(r, auth.KeyedRoute)]
    assert keyed == routes, f"routes that check no key: {set(routes) - set(keyed)}"
    return keyed


def concrete(path: str) -> str:
    """A route's path with its parameters filled in."""
    return path.replace("{image_id}", "1").replace("{svc}", "phash")


def test_every_api_route_answers_401_without_a_key_or_with_an_unknown_one(
    app: TestClient,
) -> None:
    """Every route of both routers checks keys (a KeyedRoute), and answers 401 with
    ``WWW-Authenticate: Bearer`` without a key or with one not in the file; /health alone
    answers without one. The app's other routes are the page and the docs, which need none,
    and /docs lists no operation that is not one of the routers'."""
    routes = api_routes()
    assert len(routes) > 20
    for route in routes:
        for method in route.methods or ():
            path = concrete(route.path)
            for headers in ({}, bearer("not-a-key"), {"X-API-Key": READ_KEY + "x"}):
                r = app.request(method, path, headers=headers)
                if route.path == "/health" and not headers:
                    assert r.status_code == 200 and r.json() == {"status": "up"}
                    continue
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "detail" in r.json()
    documented = {
        (path, method.upper())
        for path, ops in app.get("/openapi.json").json()["paths"].items()
        for method in ops
    }
    assert documented <= {(r.path, m) for r in routes for m in r.methods or ()}
    own = {getattr(r, "path", None) for r in app.app.routes} - {None}  # type: ignore[attr-defined]
    assert own == SHELL
    for path in (
        "/",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/web/app.js",
        "/docs-assets/favicon.png",
    ):
        assert app.get(path).status_code == 200, path


def test_a_read_key_reads_and_a_write_key_does_everything(
    app: TestClient, photos: dict[str, bytes]
) -> None:
    """A read key: searches (POST ones included), GET routes and analyses; a write key:
    adds and deletes, the original services' too. A read key on a write route is a 403,
    decided before the body is read (no 422 for a missing upload)."""
    upload = {"image": ("w.jpg", photos[WINE])}
    read, write = bearer(READ_KEY), bearer(WRITE_KEY)
    for method, path in [("POST", "/images"), ("DELETE", "/images/1")] + [
        ("POST", p)
        for p in (
            "/calculate_all_image_features",
            "/delete_all_image_features",
            "/calculate_phash_features",
            "/delete_phash_features",
        )
    ]:
        r = app.request(method, path, headers=read)
        assert r.status_code == 403 and "write key" in r.json()["detail"], (path, r.text)

    r = app.post("/images", files=upload, data={"image_id": 7}, headers=write)
    assert r.status_code == 200, r.text
    assert app.get("/images/7", headers=read).json()["file_name"] == "w.jpg"
    r = app.post("/search/image", files=upload, headers=read)
    assert r.status_code == 200 and r.json()["results"][0]["image_id"] == 7
    assert app.post("/reverse_search", files=upload, headers=read).status_code == 200
    body = {"image_id": 7, "k": 5}
    r = app.post("/phash_get_similar_images_by_id", json=body, headers=read)
    assert r.status_code == 200 and r.json()[0]["image_id"] == 7
    r = app.post("/phash_get_similar_images_by_image_buffer", files=upload, headers=read)
    assert r.status_code == 200, r.text
    assert app.get("/search/similar/7", headers=read).status_code == 200
    assert app.get("/duplicates", headers=read).status_code == 200
    r = app.post("/analyze", files=upload, headers=read)  # 503: this app has no text feature
    assert r.status_code == 503 and "no text feature" in r.json()["detail"]
    assert app.delete("/images/7", headers=write).json() == {"image_id": 7, "deleted": True}
    assert app.get("/images/7", headers=write).status_code == 404


def test_both_headers_carry_a_key(app: TestClient) -> None:
    """``Authorization: Bearer KEY`` (any case of the scheme) and ``X-API-Key: KEY``; an
    Authorization of another scheme is no key."""
    for headers in (
        bearer(READ_KEY),
        {"Authorization": f"bearer {READ_KEY}"},
        {"X-API-Key": READ_KEY},
        {"Authorization": "Basic dXNlcjpwYXNz", "X-API-Key": READ_KEY},
    ):
        assert app.get("/images/1", headers=headers).status_code == 404, headers
    assert app.get("/images/1", headers={"Authorization": f"Basic {READ_KEY}"}).status_code == 401
    assert app.get("/images/1", headers={"X-API-Key": ""}).status_code == 401


def test_the_key_file_takes_comments_and_blank_lines_and_names_bad_lines() -> None:
    """``#`` comments on their own line or after a key, blank lines; a key listed twice
    gets the wider scope; a bad line is named by its number, never by its text."""
    keys, problems = auth.parse(KEYS + "\n  # indented comment\nread:dup\nwrite:dup\n")
    assert problems == []
    assert sorted(keys.values()) == ["read", "write", "write"]
    keys, problems = auth.parse("read:ok\nsecret-without-scope\nadmin:k\nwrite:\nread:a b\n")
    assert len(keys) == 1
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5"]
    assert not any("secret" in p or "admin" in p for p in problems)


def test_an_edited_key_file_takes_effect_without_a_restart(app: TestClient, key_file: Path) -> None:
    """A key added, a key removed, the file replaced by a rename (same size), the file
    removed (every key revoked, not an open API) and back."""
    new = "n-" + READ_KEY[2:]  # as long as the read key
    assert app.get("/images/1", headers=bearer(new)).status_code == 401
    key_file.write_text(KEYS + f"read:{new}\n")
    assert app.get("/images/1", headers=bearer(new)).status_code == 404
    key_file.write_text(KEYS.replace(READ_KEY, new))
    assert app.get("/images/1", headers=bearer(READ_KEY)).status_code == 401
    assert app.get("/images/1", headers=bearer(new)).status_code == 404
    swapped = key_file.with_name("swap")
    swapped.write_text(KEYS)  # the same size: only the inode tells
    os.replace(swapped, key_file)
    assert app.get("/images/1", headers=bearer(READ_KEY)).status_code == 404
    assert app.get("/images/1", headers=bearer(new)).status_code == 401
    key_file.unlink()
    assert app.get("/images/1", headers=bearer(WRITE_KEY)).status_code == 401
    assert app.get("/images/1").status_code == 401
    key_file.write_text(KEYS)
    assert app.get("/images/1", headers=bearer(WRITE_KEY)).status_code == 404


def test_health_without_a_key_says_only_that_the_app_is_up(app: TestClient, tmp_path: Path) -> None:
    assert app.get("/health").json() == {"status": "up"}
    full = app.get("/health", headers=bearer(READ_KEY)).json()
    assert full["status"] == "ok" and set(full["extractors"]) == {"phash", "color"}
    assert app.get("/health", headers=bearer("not-a-key")).status_code == 401
    with served(tmp_path / "open") as open_app:  # no keys: the full answer to anyone
        assert open_app.get("/health").json()["indexes"]["phash"] == {"count": 0}
        assert open_app.delete("/images/1").status_code == 404
    spec = app.get("/openapi.json").json()
    assert spec["paths"]["/health"]["get"]["x-api-key"] == "optional"
    assert spec["paths"]["/search/image"]["post"]["x-api-key"] == "read"
    assert spec["paths"]["/images"]["post"]["x-api-key"] == "write"
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_loopback_host_starts_without_keys(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.ENV_FILE, raising=False)
    assert auth.startup(None, False, host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gallery.example.org", None])
def test_an_exposed_host_without_keys_refuses_to_start_unless_allowed(
    host: str | None, key_file: Path, tmp_path: Path
) -> None:
    """The reason names the host, the missing keys and both ways out."""
    with pytest.raises(auth.AuthConfigError) as refused:
        auth.startup(None, False, host)
    message = str(refused.value)
    assert repr(host) in message and "not loopback" in message
    assert "api_keys_file" in message and "allow_unauthenticated: true" in message
    assert auth.startup(None, True, host) is None
    assert auth.startup(str(key_file), False, host) == key_file
    empty = tmp_path / "empty"
    empty.write_text("# no key yet\n")
    for named, why in [(empty, "names no key"), (tmp_path / "missing", "cannot read")]:
        with pytest.raises(auth.AuthConfigError, match=why):
            auth.startup(str(named), True, host)


def test_make_serve_checks_the_config_first(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scripts/preflight.py`` (``make serve`` runs it before ``serve run``): the config's
    http_options.host and each application's args; the shipped config passes."""
    from scripts import preflight

    root = Path(__file__).resolve().parent.parent
    assert preflight.main([str(root / "configs" / "serve.yaml")]) == 0
    config = tmp_path / "serve.yaml"
    app = {"name": "imgsearch", "import_path": "graph:build_app", "args": {}}
    cfg = {"http_options": {"host": "0.0.0.0", "port": 8000}, "applications": [app]}
    config.write_text(yaml.safe_dump(cfg))
    assert preflight.main([str(config)]) == 2
    assert "refusing to start: http_options.host is '0.0.0.0'" in capsys.readouterr().err
    for args in ({"allow_unauthenticated": True}, {"api_keys_file": str(key_file)}):
        app["args"] = args
        config.write_text(yaml.safe_dump(cfg))
        assert preflight.main([str(config)]) == 0, capsys.readouterr().err


def test_the_environment_names_the_key_file(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``IMGSEARCH_API_KEYS_FILE`` overrides the app argument; relative paths are under the
    project root."""
    other = tmp_path / "other-keys"
    other.write_text("read:from-the-environment\n")
    assert auth.keys_path("keys.txt", {}) == auth.ROOT / "keys.txt"
    assert auth.keys_path("keys.txt", {auth.ENV_FILE: str(other)}) == other
    assert auth.keys_path(None, {auth.ENV_FILE: ""}) is None
    monkeypatch.setenv(auth.ENV_FILE, str(other))
    with served(tmp_path, api_keys_file=str(key_file)) as app:
        assert app.get("/images/1", headers=bearer("from-the-environment")).status_code == 404
        assert app.get("/images/1", headers=bearer(WRITE_KEY)).status_code == 401
    assert auth.startup(None, False, "0.0.0.0") == other  # keys from the environment count


def test_keys_never_appear_in_logs_or_answers(
    app: TestClient, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests refused and served, a reloaded file with a bad line: the logs (the app's
    own, at DEBUG) and the answers name no key."""
    serve_log = logging.getLogger("ray.serve")  # Ray's loggers may not propagate to root
    serve_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            answers = [
                app.get("/images/1", headers=bearer("guessed-" + READ_KEY)),
                app.get("/images/1", headers=bearer(READ_KEY)),
                app.delete("/images/1", headers={"X-API-Key": READ_KEY}),
                app.delete("/images/1", headers=bearer(WRITE_KEY)),
            ]
            key_file.write_text(KEYS + f"bogus{WRITE_KEY}\n")
            app.get("/images/1", headers=bearer(WRITE_KEY))
    finally:
        serve_log.removeHandler(caplog.handler)
    assert [a.status_code for a in answers] == [401, 404, 403, 404]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search(r"api-keys: line 5", text), text  # the capture works: it saw the reload
    for key in (READ_KEY, WRITE_KEY):
        assert key not in text
        assert not any(key in a.text or key in str(a.headers) for a in answers)


def test_scripts_need_a_write_key_when_the_app_has_keys(
    tmp_path: Path,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ingest and training check ``--api-key`` / ``IMGSEARCH_API_KEY`` against the app's
    key file before they connect to Ray."""
    from scripts import ingest

    assert auth.client_problem(None, None) is None  # no keys: open
    assert "give a write key" in str(auth.client_problem(str(key_file), None))
    assert auth.client_problem(str(key_file), "nope") == "the API key is not valid"
    assert "write key" in str(auth.client_problem(str(key_file), READ_KEY))
    assert auth.client_problem(str(key_file), WRITE_KEY) is None
    assert auth.client_problem(str(key_file), READ_KEY, auth.READ) is None

    config = tmp_path / "serve.yaml"
    app = {"name": "imgsearch", "args": {"api_keys_file": str(key_file)}}
    config.write_text(yaml.safe_dump({"applications": [app]}))
    folder = tmp_path / "photos"
    folder.mkdir()
    monkeypatch.delenv(auth.ENV_KEY, raising=False)
    assert ingest.main([str(folder), "--config", str(config)]) == 2
    assert "give a write key (--api-key, or IMGSEARCH_API_KEY)" in capsys.readouterr().err
    monkeypatch.setenv(auth.ENV_KEY, READ_KEY)
    assert ingest.main([str(folder), "--config", str(config)]) == 2
    assert "this needs a write key" in capsys.readouterr().err
    assert ingest.main([str(folder), "--config", str(config), "--api-key", "nope"]) == 2
    assert "the API key is not valid" in capsys.readouterr().err
