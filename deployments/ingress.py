"""The ingress deployment: the FastAPI app (native and original-services routers) over one
engine, whose extractors are the extractor deployments."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import routes_native, routes_seed
from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.http import install, offline_docs
from deployments.page import serve_page
from extractors import Extractor, InvalidImage, build_extractor
from extractors.base import Query
from index_actors.client import IndexClient


def create_app(engine: Engine, max_upload_bytes: int) -> FastAPI:
    """The HTTP API over an engine: both routers, the upload cap, the error mapping."""
    # /docs and /redoc are ours (offline_docs): FastAPI's load their scripts from a CDN.
    app = FastAPI(title="Image retrieval engine", docs_url=None, redoc_url=None)
    if engine.args.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=engine.args.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.state.engine = engine
    app.state.max_upload_bytes = max_upload_bytes
    install(app)
    offline_docs(app)
    serve_page(app)
    app.include_router(routes_native.router)
    app.include_router(routes_seed.router)
    return app


class ServeExtractor:
    """An extractor deployment as the engine's ``ExtractorPort``.

    ``local``: the same extractor in this replica, for query features of light extractors
    (no weights, a few ms of CPU): a hop to their deployment costs more than the work
    (measured in the bench's http section). Ingest still goes through the deployment,
    which batches and autoscales.
    """

    def __init__(self, handle: DeploymentHandle, name: str, local: Extractor | None = None) -> None:
        self.handle = handle
        self.name = name
        self.local = local

    async def extract(self, data: bytes, query: Query) -> np.ndarray | InvalidImage:
        """See ``ExtractorPort.extract``."""
        if query and self.local is not None:
            local = self.local
            return (await asyncio.to_thread(local.extract_bytes, [data], query))[0]
        result: np.ndarray | InvalidImage = await self.handle.extract.remote(data, query, self.name)
        return result

    async def embed_text(self, text: str) -> np.ndarray:
        """See ``ExtractorPort.embed_text``."""
        result: np.ndarray = await self.handle.embed_text.remote(text, self.name)
        return result

    async def info(self) -> dict[str, Any]:
        """See ``ExtractorPort.info``."""
        result: dict[str, Any] = await self.handle.info.remote(self.name)
        return result


@serve.deployment(
    # The ingress only parses and awaits; a small slice of a core is enough for it.
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,
)
# The app is built in the replica, after the constructor (``__serve_build_asgi_app__``),
# around this replica's engine: no module-level app whose state a copy would not share.
@serve.ingress()
class Ingress:
    """Serves the HTTP API over an ``Engine``."""

    def __init__(
        self, args: AppArgs, extractors: dict[str, DeploymentHandle], indexes: IndexClient
    ) -> None:
        # ``extractors``: a handle per deployment; a deployment may compute several features.
        ports = {
            name: ServeExtractor(
                extractors[args.deployment_of(name)],
                name,
                build_extractor(name, args.extractor_options(name))
                if args.query_in_ingress(name)
                else None,
            )
            for name in args.enabled
        }
        self.engine = Engine(args, ports, indexes)
        self.max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after the constructor: the app this replica serves."""
        return create_app(self.engine, self.max_upload_bytes)
