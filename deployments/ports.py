"""How the engine reaches an extractor: the ``ExtractorPort`` protocol, and its in-process
implementation (tests, single-process tools). The Serve one is in ``deployments/ingress.py``."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np

from extractors import REGISTRY, Extractor, InvalidImage, WeightsUnavailable


class ExtractorPort(Protocol):
    """One extractor, as the engine calls it."""

    async def extract(self, data: bytes, query: bool) -> np.ndarray | InvalidImage:
        """The feature of an upload (``query``: its query variants), or why the image is bad.
        Raises ``WeightsUnavailable`` when the model is missing."""

    async def embed_text(self, text: str) -> np.ndarray:
        """A text's embedding (extractors that map text and images to one space)."""

    async def info(self) -> dict[str, Any]:
        """What the extractor is and whether it can run (``extractor_info``)."""


def extractor_info(name: str, extractor: Extractor | None, unavailable: str | None) -> dict:
    """What an extractor is and whether it can run, as ``/health`` lists it."""
    cls = REGISTRY[name]
    return {
        "name": name,
        "kind": cls.kind,
        "dim": extractor.dim if extractor is not None else None,
        "metric": cls.metric,
        "device": getattr(extractor, "device", "cpu"),
        "available": unavailable is None,
        "reason": unavailable,
    }


class LocalExtractor:
    """An extractor run in this process, in a worker thread."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.unavailable: str | None = None
        try:
            extractor.load()
        except WeightsUnavailable as exc:
            self.unavailable = str(exc)

    async def extract(self, data: bytes, query: bool) -> np.ndarray | InvalidImage:
        """See ``ExtractorPort.extract``."""
        if self.unavailable is not None:
            raise WeightsUnavailable(self.unavailable)
        return (await asyncio.to_thread(self.extractor.extract_bytes, [data], query))[0]

    async def embed_text(self, text: str) -> np.ndarray:
        """See ``ExtractorPort.embed_text``."""
        if self.unavailable is not None:
            raise WeightsUnavailable(self.unavailable)
        embed = getattr(self.extractor, "embed_text", None)
        if embed is None:
            raise ValueError(f"{self.extractor.name} does not embed text")
        return (await asyncio.to_thread(embed, [text]))[0]

    async def info(self) -> dict[str, Any]:
        """See ``ExtractorPort.info``."""
        return extractor_info(self.extractor.name, self.extractor, self.unavailable)
