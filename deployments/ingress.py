"""The ingress deployment: the FastAPI app (native and original-services routers) over one
engine, whose extractors are the extractor deployments."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle

from deployments import auth, routes_native, routes_seed
from deployments.config import AppArgs
from deployments.engine import Engine
from deployments.http import install, offline_docs
from deployments.page import serve_page
from deployments.ports import extractor_info
from extractors import Extractor, InvalidImage, WeightsUnavailable, build_extractor
from extractors.base import Query
from index_actors.client import IndexClient

log = logging.getLogger("ray.serve")


def create_app(engine: Engine, max_upload_bytes: int) -> FastAPI:
    """The HTTP API over an engine: both routers, API keys, the upload cap, the error
    mapping."""
    path = auth.keys_path(engine.args.api_keys_file)
    keys = auth.KeyFile(path) if path else None
    if keys is not None:
        # The build checked the file (``auth.startup``); here a bad one only grants nothing.
        log.info("API keys from %s: %d", keys.path, len(keys.current()))
    # /docs and /redoc are ours (offline_docs): FastAPI's load their scripts from a CDN.
    app = FastAPI(
        title="Image retrieval engine",
        docs_url=None,
        redoc_url=None,
        dependencies=auth.documented(keys),
    )
    if engine.args.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=engine.args.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.state.engine = engine
    app.state.max_upload_bytes = max_upload_bytes
    app.state.keys = keys  # every API route checks it (``auth.KeyedRoute``)
    install(app)
    # The page and the docs need no key: static files, no data.
    offline_docs(app)
    serve_page(app)
    app.include_router(routes_native.router)
    app.include_router(routes_seed.router)
    return app


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies listen on, as the controller has it.

    ``http_options`` is Serve's, not an app argument: ``serve run`` starts the controller
    with the config's before it builds the app, so the running controller knows it (Ray
    2.60 has no public call for it, hence ``_get_global_client``). Without a controller
    (or before Ray is up), ``serve.run`` will start one with Ray's defaults
    (``HTTPOptions()``: every interface under HAProxy).
    """
    client = (
        _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
    )
    return client.http_config.host if client is not None else HTTPOptions().host


class Uploads:
    """The features of one upload that an add asks of one extractor deployment at once,
    sent as one request (``ExtractorDeployment.extract_many``): the upload travels to the
    deployment once, not once per feature (``extract_cpu`` computes five). The engine asks
    for every feature in one ``asyncio.gather``: the first ask waits one turn of the event
    loop for the others."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.waiting: dict[int, tuple[bytes, dict[str, asyncio.Future[Any]]]] = {}
        self.sending: set[asyncio.Task[None]] = set()

    async def extract(self, data: bytes, name: str) -> Any:
        """``name``'s feature of the stored image ``data`` (``extract``'s answer)."""
        loop = asyncio.get_running_loop()
        if id(data) not in self.waiting:
            self.waiting[id(data)] = (data, {})
            loop.call_soon(self._send, id(data))
        future = loop.create_future()
        self.waiting[id(data)][1][name] = future
        return await future

    def _send(self, key: int) -> None:
        data, futures = self.waiting.pop(key)
        task = asyncio.ensure_future(self._deliver(data, futures))
        self.sending.add(task)  # a task nothing refers to may be collected before it ends
        task.add_done_callback(self.sending.discard)

    async def _deliver(self, data: bytes, futures: dict[str, asyncio.Future[Any]]) -> None:
        try:
            results = await self.handle.extract_many.remote(data, False, list(futures))
        except Exception as exc:  # the request itself failed: every feature it carried
            results = [exc] * len(futures)
        for future, result in zip(futures.values(), results, strict=True):
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ServeExtractor:
    """An extractor deployment as the engine's ``ExtractorPort``.

    ``local``: the same extractor in this replica, for query features of light extractors
    (no weights, a few ms of CPU): a hop to their deployment costs more than the work
    (measured in the bench's http section). Ingest still goes through the deployment,
    which batches and autoscales.

    ``unavailable``: why the model cannot run, when the app's build found its weights
    missing: this port answers for it, so that no upload travels to a replica that cannot
    use it, and that replica, idle, can be scaled to none.
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        name: str,
        local: Extractor | None = None,
        unavailable: str | None = None,
        uploads: Uploads | None = None,
    ) -> None:
        self.handle = handle
        self.name = name
        self.local = local
        self.unavailable = unavailable
        self.uploads = uploads or Uploads(handle)

    async def extract(self, data: bytes, query: Query) -> np.ndarray | InvalidImage:
        """See ``ExtractorPort.extract``."""
        if self.unavailable is not None:
            raise WeightsUnavailable(self.unavailable)
        if query and self.local is not None:
            local = self.local
            return (await asyncio.to_thread(local.extract_bytes, [data], query))[0]
        if not query:  # an add: with the upload's other features of this deployment
            stored: np.ndarray | InvalidImage = await self.uploads.extract(data, self.name)
            return stored
        # A query alone: each source's search starts as soon as its own feature is ready.
        result: np.ndarray | InvalidImage = await self.handle.extract.remote(data, query, self.name)
        return result

    async def embed_text(self, text: str) -> np.ndarray:
        """See ``ExtractorPort.embed_text``."""
        if self.unavailable is not None:
            raise WeightsUnavailable(self.unavailable)
        result: np.ndarray = await self.handle.embed_text.remote(text, self.name)
        return result

    async def info(self, column: bool = False) -> dict[str, Any]:
        """See ``ExtractorPort.info``."""
        if self.unavailable is not None:
            return extractor_info(self.name, None, self.unavailable)
        result: dict[str, Any] = await self.handle.info.remote(self.name, column)
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
        self,
        args: AppArgs,
        extractors: dict[str, DeploymentHandle],
        indexes: IndexClient,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        # ``extractors``: a handle per deployment; a deployment may compute several features.
        # ``unavailable``: the features whose weights the build found missing, and why.
        unavailable = unavailable or {}
        uploads = {deployment: Uploads(handle) for deployment, handle in extractors.items()}
        ports = {
            name: ServeExtractor(
                extractors[args.deployment_of(name)],
                name,
                build_extractor(name, args.extractor_options(name))
                if args.query_in_ingress(name)
                else None,
                unavailable.get(name),
                uploads[args.deployment_of(name)],
            )
            for name in args.enabled
        }
        self.engine = Engine(args, ports, indexes)
        # Start a replica of each deployment with a feature that can run: serve.yaml lets
        # the network deployments scale to none (``min_replicas: 0``), which those whose
        # weights are missing stay at, since nothing is sent to them; the others start now
        # rather than on a user's first request (a model load). Kept: a dropped response
        # may cancel its request.
        self.woken = [
            extractors[deployment].info.remote(next(n for n in names if n not in unavailable))
            for deployment, names in args.deployments.items()
            if any(n not in unavailable for n in names)
        ]
        self.max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)

    async def extract_features(
        self, data: bytes, names: list[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]] | InvalidImage:
        """An upload's features as an add computes them, and why any could not be, without
        storing them: batch ingest (``deployments/ingest.py``) writes them itself, a batch
        at a time. A bad image is answered as a value, to be reported with its file."""
        try:
            return await self.engine.extract(data, names, query=False)
        except InvalidImage as exc:
            return exc

    async def extractor_infos(self) -> dict[str, dict[str, Any]]:
        """What ``/health`` lists of each enabled extractor (whether it can run, and why
        not), and for each that can its batch-ingest column (``column``: dtype, values per
        row), so that batch ingest need not build the extractors: the global network's
        configuration alone imports torch and timm, seconds of a 40-file ingest."""

        ports = self.engine.extractors
        infos = await asyncio.gather(*(port.info(column=True) for port in ports.values()))
        return dict(zip(ports, infos, strict=True))

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after the constructor: the app this replica serves."""
        return create_app(self.engine, self.max_upload_bytes)
