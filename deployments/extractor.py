"""The one generic extractor deployment, bound once per group of features (one feature by
default; ``deployment:`` in a feature's config groups several in one replica)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.config import AppArgs
from deployments.ports import build_group
from extractors import REGISTRY, InvalidImage, WeightsUnavailable, build_extractor
from extractors import group as extractor_group
from extractors.base import Query
from extractors.group import Request

Result = np.ndarray | InvalidImage


def _trim() -> None:
    """Return freed heap memory to the OS (glibc; elsewhere nothing to do)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class IdleTrim:
    """Runs ``_trim`` on its own thread once no batch is running.

    Side-by-side threads leave freed image buffers in glibc's per-thread arenas: measured,
    a weight-free replica held 740 MB after three adds instead of 275 MB. A trim takes
    8 ms at the median (31 ms at most) after a search's SIFT query and locks each arena in
    turn, so it runs neither inside a batch (its caller would wait for it) nor beside one.
    """

    def __init__(self, trim: Callable[[], None] = _trim) -> None:
        self._trim = trim
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        threading.Thread(target=self._loop, name="idle-trim", daemon=True).start()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Count a batch as running inside the block; the last one out asks for a trim."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

    def _loop(self) -> None:
        while True:
            self._idle.wait()
            self._idle.clear()
            with self._lock:
                busy = self._running > 0
            if not busy:  # a batch started meanwhile: its end asks again
                self._trim()


# A throwaway worker (max_calls=1: the process exits after the call, and its memory with
# it), so that the check's torch never stays in a process of the app. One worker for all:
# torch is imported once, not once per feature.
@ray.remote(max_calls=1, num_cpus=0)
def _weights_problems(features: dict[str, dict[str, Any]]) -> dict[str, str]:
    found = {}
    for name, options in features.items():
        try:
            build_extractor(name, options).load()
        except WeightsUnavailable as exc:
            found[name] = str(exc)
    return found


def models_without_weights(args: AppArgs) -> dict[str, str]:
    """The enabled network features whose weights are missing, and why, checked when the
    app is built: their replicas then never import torch (~0.5 GiB a process) only to
    answer "unavailable". A redeploy once the weights are there starts them."""
    names = [n for n in args.enabled if REGISTRY[n].uses_torch]
    if not names or not ray.is_initialized():
        return {}
    found: dict[str, str] = ray.get(
        _weights_problems.remote({n: args.extractor_options(n) for n in names})
    )
    return found


@serve.deployment(
    # A fraction of a core: on a 2-core laptop the whole graph must fit, and the real limit on
    # throughput is the batch, not the reservation. serve.yaml overrides per feature.
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
)
class ExtractorDeployment:
    """Serves a group of extractors (usually one): batched, blocking work off the event
    loop; a feature riding on another's network (tags on global) shares its pass.

    ``extract(data, query, feature)`` returns the feature (query=True: the query variants)
    or the ``InvalidImage`` of a bad upload as a value, so that one bad file never fails its
    batch.
    """

    def __init__(
        self,
        names: list[str],
        options: dict[str, dict[str, Any]],
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self.names = names
        options = {n: dict(options.get(n) or {}) for n in names}
        for name in names:
            if REGISTRY[name].uses_torch:
                # A replica with a GPU share runs on it; torch uses as many threads as the
                # cores the replica reserved (at least one), not every core of the machine.
                if ray.get_gpu_ids():
                    options[name].setdefault("device", "cuda")
                cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
                options[name].setdefault("threads", max(1, math.ceil(cpus)))
        # A missing or broken model must not stop the app: the replica comes up, says why
        # in info() (hence /health), and answers every call for that feature with it.
        self.ports, self.riders = build_group(names, options, unavailable or {})
        # Weight-free extractors of one group run side by side; networks one at a time.
        light = len(names) > 1 and not any(REGISTRY[n].uses_torch for n in names)
        self.threads = ThreadPoolExecutor(len(names), "extract") if light else None
        self._batcher = self._batch_side_by_side if light else self._batch
        self.trim = IdleTrim() if light else None

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``max_batch_size`` and ``batch_wait_timeout_s``."""
        batch: Any = self._batcher  # serve.batch adds the setters at runtime
        batch.set_max_batch_size(int(config.get("max_batch_size", 16)))
        batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.0)))

    async def info(self, feature: str | None = None, column: bool = False) -> dict[str, Any]:
        """What an extractor of this group is and whether it can run (``ExtractorPort.info``,
        with its batch-ingest column when ``column``)."""
        return await self.ports[feature or self.names[0]].info(column)

    # No wait by default: a lone request runs at once, and under load the requests that queue
    # while a batch runs form the next batch anyway.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batch(self, items: list[Request]) -> list[Result]:
        return await asyncio.to_thread(self._run, items)

    # Weight-free groups: a few batches at once, so that a search's SIFT query does not
    # wait behind an ingest batch's OCR (SIFT, onnxruntime and PIL release the GIL).
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=4)
    async def _batch_side_by_side(self, items: list[Request]) -> list[Result]:
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[Request]) -> list[Result]:
        ready = {n: p.extractor for n, p in self.ports.items() if p.extractor is not None}
        with self.trim.batch() if self.trim else contextlib.nullcontext():
            return extractor_group.run(ready, self.riders, items, self.threads)

    async def extract(
        self, data: bytes, query: Query = False, feature: str | None = None
    ) -> Result:
        """A feature of one upload (batched with concurrent calls)."""
        name = feature or self.names[0]
        self.ports[name].ready()
        return await self._batcher((data, query, name))

    async def extract_many(
        self, data: bytes, query: Query, features: list[str]
    ) -> list[Result | BaseException]:
        """Several features of one upload in one request (an add's, ``ingress.Uploads``),
        each batched as ``extract`` batches it; a feature that fails answers its exception
        as a value, the others their features."""

        found = (self.extract(data, query, n) for n in features)
        return list(await asyncio.gather(*found, return_exceptions=True))

    async def embed_text(self, text: str, feature: str | None = None) -> np.ndarray:
        """Embedding of a text query (extractors that map text and images to one space)."""
        return await self.ports[feature or self.names[0]].embed_text(text)
