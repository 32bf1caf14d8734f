"""How the engine reaches an extractor: the ``ExtractorPort`` protocol, and its in-process
implementation (tests, single-process tools). The Serve one is in ``deployments/ingress.py``."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np

from extractors import REGISTRY, Extractor, InvalidImage, WeightsUnavailable, build_extractor
from extractors.base import Query
from extractors.group import share_networks


class ExtractorPort(Protocol):
    """One extractor, as the engine calls it."""

    async def extract(self, data: bytes, query: Query) -> np.ndarray | InvalidImage:
        """The feature of an upload (``query``: its query variants, ``FUSED``: for a fused
        search), or why the image is bad. Raises ``WeightsUnavailable`` when the model is
        missing."""

    async def embed_text(self, text: str) -> np.ndarray:
        """A text's embedding (extractors that map text and images to one space)."""

    async def info(self, column: bool = False) -> dict[str, Any]:
        """What the extractor is and whether it can run (``extractor_info``); with
        ``column``, also its batch-ingest column when it can run (``column``:
        ``Extractor.column``, dtype and values per row)."""


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
    """An extractor run in this process, in a worker thread (tests, tools, and the extractor
    deployment around its batching). A missing or broken model is a state, not a crash:
    every call answers ``WeightsUnavailable`` with the reason."""

    def __init__(self, name: str, extractor: Extractor | None, unavailable: str | None = None):
        self.name = name
        self.extractor = extractor
        self.unavailable = unavailable

    @classmethod
    def build(cls, name: str, options: dict[str, Any] | None = None) -> LocalExtractor:
        """The registered extractor ``name``, built with ``options`` and loaded."""
        try:
            extractor = build_extractor(name, options)
            extractor.load()
        except WeightsUnavailable as exc:
            return cls(name, None, str(exc))
        return cls(name, extractor)

    def ready(self) -> Extractor:
        """The loaded extractor; ``WeightsUnavailable`` with the reason otherwise."""
        if self.extractor is None or self.unavailable is not None:
            raise WeightsUnavailable(self.unavailable or f"{self.name} is not loaded")
        return self.extractor

    async def extract(self, data: bytes, query: Query) -> np.ndarray | InvalidImage:
        """See ``ExtractorPort.extract``."""
        extractor = self.ready()
        return (await asyncio.to_thread(extractor.extract_bytes, [data], query))[0]

    async def embed_text(self, text: str) -> np.ndarray:
        """See ``ExtractorPort.embed_text``."""
        embed = getattr(self.ready(), "embed_text", None)
        if embed is None:
            raise ValueError(f"{self.name} does not embed text")
        return (await asyncio.to_thread(embed, [text]))[0]

    async def info(self, column: bool = False) -> dict[str, Any]:
        """See ``ExtractorPort.info``."""
        info = extractor_info(self.name, self.extractor, self.unavailable)
        if column and info["available"]:
            info["column"] = self.ready().column
        return info


def build_group(
    names: list[str], options: dict[str, dict[str, Any]], unavailable: dict[str, str]
) -> tuple[dict[str, LocalExtractor], dict[str, str]]:
    """The extractors one process runs together, each as a ``LocalExtractor``, and which
    rides on which (``extractors/group.py``). Riders join their sources before anything
    loads, so a shared network loads once. ``unavailable``: features known to lack their
    weights (``deployments.extractor.models_without_weights``), never built here: their
    model code is not even imported."""
    built: dict[str, Extractor] = {}
    ports: dict[str, LocalExtractor] = {}
    for name in names:
        try:
            if name in unavailable:
                raise WeightsUnavailable(unavailable[name])
            built[name] = build_extractor(name, options.get(name))
        except WeightsUnavailable as exc:
            ports[name] = LocalExtractor(name, None, str(exc))
    riders = share_networks(built)
    for name, extractor in built.items():
        try:
            extractor.load()
            ports[name] = LocalExtractor(name, extractor)
        except WeightsUnavailable as exc:
            ports[name] = LocalExtractor(name, None, str(exc))
    ready = {
        r: s for r, s in riders.items() if ports[r].unavailable is ports[s].unavailable is None
    }
    return {n: ports[n] for n in names}, ready
