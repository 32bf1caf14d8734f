"""The one generic extractor deployment, bound once per feature."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.ports import LocalExtractor
from extractors import REGISTRY, InvalidImage

Result = np.ndarray | InvalidImage


@serve.deployment(
    # A fraction of a core: on a 2-core laptop the whole graph must fit, and the real limit on
    # throughput is the batch, not the reservation. serve.yaml overrides per feature.
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
)
class ExtractorDeployment:
    """Serves one extractor: batched, blocking work off the event loop.

    ``extract(data, query)`` returns the feature (query=True: the query variants) or the
    ``InvalidImage`` of a bad upload as a value, so that one bad file never fails its batch.
    """

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name = name
        options = dict(options or {})
        if REGISTRY[name].uses_torch:
            # A replica with a GPU share runs on it; torch uses as many threads as the cores
            # the replica reserved (at least one), not every core of the machine.
            if ray.get_gpu_ids():
                options.setdefault("device", "cuda")
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            options.setdefault("threads", max(1, math.ceil(cpus)))
        # A missing or broken model must not stop the app: the replica comes up, says why
        # in info() (hence /health), and answers every call with that reason.
        self.local = LocalExtractor.build(name, options)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``max_batch_size`` and ``batch_wait_timeout_s``."""
        batch: Any = self._batch  # serve.batch adds the setters at runtime
        batch.set_max_batch_size(int(config.get("max_batch_size", 16)))
        batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.0)))

    async def info(self) -> dict[str, Any]:
        """What this extractor is and whether it can run."""
        return await self.local.info()

    # No wait by default: a lone request runs at once, and under load the requests that queue
    # while a batch runs form the next batch anyway.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batch(self, items: list[tuple[bytes, bool]]) -> list[Result]:
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[tuple[bytes, bool]]) -> list[Result]:
        extractor = self.local.ready()
        out: list[Result] = [InvalidImage("not computed")] * len(items)
        for query in (False, True):
            slots = [i for i, (_, q) in enumerate(items) if q is query]
            if slots:
                results = extractor.extract_bytes([items[i][0] for i in slots], query=query)
                for slot, result in zip(slots, results, strict=True):
                    out[slot] = result
        return out

    async def extract(self, data: bytes, query: bool = False) -> Result:
        """Feature of one upload (batched with concurrent calls)."""
        self.local.ready()
        return await self._batch((data, query))

    async def embed_text(self, text: str) -> np.ndarray:
        """Embedding of a text query (extractors that map text and images to one space)."""
        return await self.local.embed_text(text)
