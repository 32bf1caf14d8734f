"""API keys (Ray-free): ``read`` and ``write`` scopes from a key file, checked by every API
route before the request's body is read.

The key file has one key per line, ``read:KEY`` or ``write:KEY``, and ``#`` comments; it
is named by the app argument ``api_keys_file`` or, overriding it, the environment variable
``IMGSEARCH_API_KEYS_FILE``, and re-read when it changes. Without one the API is open, which
the app allows on a loopback host only (``startup``).

Every API route is a ``KeyedRoute``. A route says which key it needs in its ``openapi_extra``
(``needs(READ)``), which ``/docs`` shows; a route that says nothing needs a read key for GET
and a write key otherwise, so a forgotten route is closed, not open. A write key covers
everything. The page's shell and the docs are the app's own routes, not keyed: static files
with no data, and the page must load to ask for a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from fastapi import Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer

# Serve's logger, so that warnings about the key file land in the replica's log.
log = logging.getLogger("ray.serve")

READ, WRITE = "read", "write"
#: A route that answers without a key, and more with a valid one (``/health``).
OPTIONAL = "optional"
#: Environment variable naming the key file; it overrides the app argument.
ENV_FILE = "IMGSEARCH_API_KEYS_FILE"
#: Environment variable with the key that scripts (ingest, training) present.
ENV_KEY = "IMGSEARCH_API_KEY"
#: The OpenAPI extension of each operation that names the key it needs.
MARK = "x-api-key"
#: What ``check`` leaves in the request's scope: the key's scope, None without a key.
GRANTED = "imgsearch.key_scope"
ROOT = Path(__file__).resolve().parent.parent


class AuthConfigError(ValueError):
    """The app must not start: a key file that cannot be used, or an exposed host without
    keys."""


def needs(scope: str) -> dict[str, Any]:
    """A route's ``openapi_extra`` for the key it needs (READ, WRITE or OPTIONAL)."""
    return {MARK: scope}


def keys_path(configured: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The key file: ``IMGSEARCH_API_KEYS_FILE`` if set, else the app argument; relative
    paths resolve against the project root (as ``data_dir`` does). None: no keys."""
    named = environ.get(ENV_FILE) or configured
    if not named:
        return None
    path = Path(named).expanduser()
    return path if path.is_absolute() else ROOT / path


def _digest(key: str) -> bytes:
    # Keys are compared as digests: equal lengths, so compare_digest leaks nothing about
    # a key's length either.
    return hashlib.sha256(key.encode()).digest()


def parse(text: str) -> tuple[dict[bytes, str], list[str]]:
    """The keys of a key file's text (digest -> scope; a key listed twice gets the wider
    scope) and its problems, by line number only (never the line: it may hold a key)."""
    keys: dict[bytes, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        scope, sep, key = words[0].partition(":")
        if len(words) > 1 and not words[1].startswith("#"):
            problems.append(f"line {number}: a key has no spaces (a comment starts with #)")
        elif not sep or scope.lower() not in (READ, WRITE) or not key:
            problems.append(f"line {number}: not read:KEY or write:KEY")
        else:
            digest = _digest(key)
            keys[digest] = WRITE if WRITE in (scope.lower(), keys.get(digest)) else READ
    return keys, problems


class KeyFile:
    """The keys of one file, re-read when its size, time or inode change (a ``stat`` per
    check: microseconds). A file that is missing or unreadable grants nothing until it is
    back: a removed file revokes every key rather than opening the API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = (-1, -1, -1)  # no stat says this: unread
        self._keys: dict[bytes, str] = {}

    def load(self) -> int:
        """Read the file now, strictly (at start-up): the number of keys, or
        ``AuthConfigError`` naming what is wrong."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise AuthConfigError(f"cannot read the API key file {self.path}: {exc}") from None
        keys, problems = parse(text)
        if problems:
            raise AuthConfigError(f"API key file {self.path}: " + "; ".join(problems))
        if not keys:
            raise AuthConfigError(
                f"API key file {self.path} names no key (lines read:KEY or write:KEY)"
            )
        return len(keys)

    def current(self) -> dict[bytes, str]:
        """The keys as the file says now (digest -> scope)."""
        try:
            st = os.stat(self.path)
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None
        if seen == self._seen:
            return self._keys
        self._seen = seen
        try:
            keys, problems = parse(self.path.read_text())
        except OSError as exc:
            log.warning("API key file %s cannot be read (%s): no key is valid", self.path, exc)
            keys, problems = {}, []
        for problem in problems:
            log.warning("API key file %s: %s (skipped)", self.path, problem)
        self._keys = keys
        return keys

    def scope(self, key: str | None) -> str | None:
        """The scope of a key (READ or WRITE), None when it is not in the file. Every
        stored key is compared, in constant time, so timing tells nothing about which."""
        keys = self.current()
        if not key:
            return None
        given = _digest(key)
        found = None
        for digest, scope in keys.items():
            if hmac.compare_digest(digest, given):
                found = scope
        return found


def is_loopback(host: str | None) -> bool:
    """Whether an HTTP host only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def startup(
    configured: str | None,
    allow_unauthenticated: bool,
    host: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Path | None:
    """Whether the app may start (``AuthConfigError`` names why not) and its key file.

    A named key file must be readable, well formed and name a key. Without one, the API is
    open: allowed when the HTTP host is loopback, or when ``allow_unauthenticated`` says
    that something in front of the app checks access.
    """
    path = keys_path(configured, environ)
    if path is not None:
        KeyFile(path).load()
        return path
    if is_loopback(host) or allow_unauthenticated:
        return None
    raise AuthConfigError(
        f"refusing to start: http_options.host is {host!r}, not loopback, and no API keys "
        "are configured, so anyone who reaches the port could read and delete the "
        f"collection. Name a key file (app argument api_keys_file, or {ENV_FILE}) with "
        "lines read:KEY / write:KEY, or, when something in front of the app checks access, "
        "set allow_unauthenticated: true in the app's args"
    )


def client_problem(
    configured: str | None,
    key: str | None,
    need: str = WRITE,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Why a script (ingest, training) may not act with ``key``, or None. Scripts reach the
    index actors through Ray, not HTTP, so they check the key against the app's key file
    (the same config and environment) themselves."""
    path = keys_path(configured, environ)
    if path is None:
        return None
    if not key:
        return f"the app has API keys: give a {need} key (--api-key, or {ENV_KEY})"
    keys = KeyFile(path)
    try:
        keys.load()
    except AuthConfigError as exc:
        return str(exc)
    scope = keys.scope(key)
    if scope is None:
        return "the API key is not valid"
    if need == WRITE and scope != WRITE:
        return "this needs a write key; the key given may only read"
    return None


def key_of(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY``, else ``X-API-Key``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def requirement(route: APIRoute) -> str:
    """The key a route needs: what it declares (``needs``), else read for GET and HEAD
    and write for anything else."""
    declared = (route.openapi_extra or {}).get(MARK)
    if declared:
        return str(declared)
    return READ if route.methods and route.methods <= {"GET", "HEAD"} else WRITE


def check(request: Request, need: str) -> Response | None:
    """The 401 (no or unknown key) or 403 (a read key where a write key is needed) for a
    request, or None, leaving the key's scope in the request (``granted``)."""
    keys: KeyFile | None = request.app.state.keys  # set by create_app; None: no keys
    if keys is None:  # open: allowed on loopback only (``startup``)
        request.scope[GRANTED] = WRITE
        return None
    key = key_of(request.headers)
    scope = keys.scope(key)
    if scope is None and (key or need != OPTIONAL):
        detail = (
            "the API key is not valid"
            if key
            else "an API key is needed: send Authorization: Bearer KEY (or X-API-Key: KEY)"
        )
        return JSONResponse({"detail": detail}, 401, {"WWW-Authenticate": "Bearer"})
    if need == WRITE and scope != WRITE:
        return JSONResponse({"detail": "this needs a write key; the key given may only read"}, 403)
    request.scope[GRANTED] = scope
    return None


class KeyedRoute(APIRoute):
    """An API route that checks the request's key first, before its body is read (an
    upload without a key costs nothing). Every router of the API uses it
    (``APIRouter(route_class=KeyedRoute)``); the key each route needs is written into its
    OpenAPI operation, so ``/docs`` shows it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.openapi_extra = {**(self.openapi_extra or {}), MARK: requirement(self)}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler (body, dependencies, endpoint) behind the key check."""
        handle = super().get_route_handler()

        async def checked(request: Request) -> Response:
            refused = check(request, requirement(self))
            return refused if refused is not None else await handle(request)

        return checked


def documented(keys: KeyFile | None) -> list[Any]:
    """App dependencies that only document the two headers, so that ``/docs`` offers an
    Authorize button; ``KeyedRoute`` does the checking."""
    if keys is None:
        return []
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")
    return [Security(bearer), Security(header)]


def granted(request: Request) -> str | None:
    """The scope of the request's key (READ or WRITE; WRITE when the app has no keys),
    None when it came without one (only on OPTIONAL routes)."""
    found = request.scope.get(GRANTED)
    return str(found) if found else None
