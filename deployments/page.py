"""The search page: ``GET /`` answers ``web/index.html``, and ``/web/`` its script, styles and
images. Plain files, no build step; the page calls the same HTTP API as any client."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

#: The page's files: index.html, app.js, app.css.
WEB = Path(__file__).resolve().parent / "web"


def serve_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/web/`` (no API route starts there)."""
    app.mount("/web", StaticFiles(directory=WEB), name="web")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # Revalidated on every load (ETag), so that a new version of the page is picked up;
        # the page's files are found relative to it, which also works under a route prefix.
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})
