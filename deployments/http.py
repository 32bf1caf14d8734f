"""HTTP plumbing shared by the routers: the engine dependency, uploads, form and query
models, the upload cap, and the one mapping of domain errors to statuses."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from ray.exceptions import RayError

from deployments.engine import Engine
from extractors import InvalidImage
from index_actors.interface import (
    NO_SPACE,
    BackendDown,
    Conflict,
    InvalidInput,
    NotFound,
    StorageFull,
    Unavailable,
    reason,
    storage_full,
)

log = logging.getLogger("ray.serve")

#: Domain error -> HTTP status; ``InvalidImage`` carries its own (400, 413, 415, 422).
STATUS: dict[type[Exception], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
    BackendDown: 503,
    StorageFull: 507,  # Insufficient Storage (RFC 4918)
}


def engine(request: Request) -> Engine:
    """The ingress replica's engine (a FastAPI dependency)."""
    found: Engine = request.app.state.engine
    return found


def upload(request: Request, image: UploadFile | None) -> Callable[[], Awaitable[bytes]]:
    """Reads the multipart field ``image`` when the engine asks: 422 when it is missing,
    400 when empty, 413 over the cap."""

    async def read() -> bytes:
        cap: int = request.app.state.max_upload_bytes
        if image is None:
            raise InvalidInput("missing multipart file field 'image'")
        data = await image.read(cap + 1)
        if len(data) > cap:
            raise InvalidImage(f"upload is over the limit of {cap} bytes", 413)
        if not data:
            raise InvalidImage("empty upload: the 'image' field has no data", 400)
        return data

    return read


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``); weak tags match
    too, as RFC 9110 compares them for this header."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _as(model: type[BaseModel], where: Callable[..., Any]) -> Callable[..., BaseModel]:
    """A dependency that reads ``model``'s fields as form fields or query parameters, so that
    FastAPI validates them (422) and ``/docs`` lists them."""
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=where(None),
            # The constraints (ge, le, ...) sit inside the type (``index_actors.kinds``);
            # what is left as metadata is a validator of the whole field (``Blank``).
            annotation=Annotated[(field.annotation, *field.metadata)]
            if field.metadata
            else field.annotation,
        )
        for name, field in model.model_fields.items()
    ]

    def build(**values: Any) -> BaseModel:
        return model.model_construct(**values)

    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return build


def as_form(model: type[BaseModel]) -> Callable[..., BaseModel]:
    """``model``'s fields as multipart form fields."""
    return _as(model, Form)


def as_query(model: type[BaseModel]) -> Callable[..., BaseModel]:
    """``model``'s fields as query parameters."""
    return _as(model, Query)


class _BodyLimit:
    """413 for a body over the upload cap, before it is parsed or spooled to disk.

    Checks Content-Length up front and counts the bytes of a chunked body as they arrive
    (raising from ``receive``, which FastAPI's body parsing passes on as the 413).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The app from the scope, not a module global: Serve ships the ingress class,
        # FastAPI app included, by value, so a module's own `app` may be another object.
        cap = getattr(scope["app"].state, "max_upload_bytes", None) if "app" in scope else None
        if scope["type"] != "http" or cap is None:
            return await self.inner(scope, receive, send)
        limit = cap + 64 * 1024  # multipart framing around the file itself
        too_big = f"upload is over the limit of {cap} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await JSONResponse({"detail": too_big}, 413)(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"{too_big}: stopped reading after {seen} bytes")
            return message

        await self.inner(scope, counted, send)


def _problem(error: dict[str, Any]) -> str:
    """One validation error as a sentence naming the field."""
    field = str(error["loc"][-1]) if error.get("loc") else "request"
    given = error.get("input")
    code = error.get("type", "")
    ctx = error.get("ctx") or {}
    if code == "missing":
        return f"{field} is required"
    if code.startswith("int_"):
        if "ge" in ctx or "lt" in ctx:
            return f"{field} must be an integer {_bounds(ctx)}, got {given!r}"
        return f"{field} must be an integer, got {given!r}"
    if code.startswith("float_") or code == "finite_number":
        return f"{field} must be a finite number, got {given!r}"
    if ctx:
        return f"{field} must be {_bounds(ctx)}, got {given!r}"
    return f"{field}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def _bounds(ctx: dict[str, Any]) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{words[k]} {v}" for k, v in ctx.items() if k in words)


def install(app: FastAPI) -> None:
    """The upload cap and the error handlers: every domain error becomes one status with
    ``{"detail": message}``; a validation error names the field and what it must be."""
    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "; ".join(_problem(e) for e in exc.errors())}, 422)

    @app.exception_handler(InvalidImage)
    async def _image(request: Request, exc: InvalidImage) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status)

    for error, status in STATUS.items():
        app.add_exception_handler(error, _mapper(status))

    @app.exception_handler(RayError)
    async def _ray_error(request: Request, exc: RayError) -> JSONResponse:
        """An index or extractor call failed for reasons not the client's: 503, the cause."""
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        if NO_SPACE in reason(exc):
            return JSONResponse({"detail": str(storage_full(reason(exc)))}, 507)
        return JSONResponse({"detail": f"a backend call failed, retry: {reason(exc)}"}, 503)


def _mapper(status: int) -> Callable[..., Any]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status)

    return handle


def offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI 5, which reads FastAPI's OpenAPI 3.1) and ``/redoc`` from the
    files the ``fastapi-offline`` package ships, not from a CDN, so that they work on a
    machine without internet."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = str(files("fastapi_offline") / "static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{root(request)}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root(request)}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root(request)}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root(request)}/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{root(request)}{app.openapi_url}",
            title=f"{app.title} - API",
            redoc_js_url=f"{root(request)}/docs-assets/redoc.standalone.js",
            redoc_favicon_url=f"{root(request)}/docs-assets/favicon.png",
            with_google_fonts=False,
        )
