"""The read side of the engine: the enabled features, query extraction, searches by image
and by a stored image, and their fused answers. Ray-free; text search is
``deployments/text_search.py``'s, and ``Engine`` adds the writes and the rest
(``deployments/engine.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from deployments.config import AppArgs
from deployments.fusion import fuse
from deployments.ports import ExtractorPort
from deployments.schemas import (
    FusedHit,
    Listed,
    Match,
    SearchResult,
    Similar,
)
from extractors import REGISTRY, InvalidImage, WeightsUnavailable
from extractors.base import FUSED, Query
from extractors.images import header
from index_actors.client import IndexClient
from index_actors.interface import (
    Hit,
    Hits,
    InvalidInput,
    Unavailable,
    UnknownImage,
    reason,
)
from index_actors.kinds import kind_of

log = logging.getLogger("ray.serve")
Options = BaseModel | Mapping[str, Any]
#: An upload: its bytes, or a coroutine function that reads them. The engine reads it where
#: the checks of the request's other fields are done, so that their errors come first.
Data = bytes | Callable[[], Awaitable[bytes]]


async def read(data: Data) -> bytes:
    """The bytes of an upload."""
    return data if isinstance(data, bytes) else await data()


class Searches:
    """Searches over the extractors and the index client; see the module docstring."""

    def __init__(
        self, args: AppArgs, extractors: Mapping[str, ExtractorPort], client: IndexClient
    ) -> None:
        self.args = args
        self.extractors = dict(extractors)
        self.client = client
        #: The feature that embeds text queries into its image space (CLIP), if enabled.
        self.embedder = next(
            (n for n in self.extractors if hasattr(REGISTRY[n], "embed_text")), None
        )

    # --- what is enabled ------------------------------------------------------------------
    @property
    def indexed(self) -> list[str]:
        """Features with an open index, in config order."""
        return self.client.features

    @property
    def visual(self) -> list[str]:
        """Indexed features that compare images (all but the text ones)."""
        return [n for n in self.indexed if kind_of(n).visual]

    @property
    def textual(self) -> list[str]:
        """Indexed text features (ocr, caption, tags, places)."""
        return [n for n in self.indexed if kind_of(n).reads_text]

    def features(self, requested: str | None, default: list[str] | None = None) -> list[str]:
        """The requested features (a comma list), checked; ``default`` (every indexed
        feature unless given) when none is requested."""
        if not requested:
            return self.indexed if default is None else default
        names = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in names if n not in self.extractors]
        if unknown or not names:
            raise InvalidInput(
                f"unknown or disabled features {unknown or requested!r}; "
                f"enabled: {', '.join(self.extractors)}"
            )
        for name in names:
            if name in self.client.missing:
                raise Unavailable(f"{name} is unavailable: {self.client.missing[name]}")
        return list(dict.fromkeys(names))

    def k(self, k: int | None) -> int:
        """A result count within the config's bounds (its default when unset)."""
        value = self.args.fusion.default_k if k is None else k
        if not 1 <= value <= self.args.fusion.max_k:
            raise InvalidInput(f"k must be between 1 and {self.args.fusion.max_k}, got {value}")
        return value

    def options(self, name: str, values: Options, seed: bool = False) -> dict[str, Any]:
        """The per-search options of one feature's index from request fields."""
        return kind_of(name).search_options(values, REGISTRY[name].metric, seed)

    # --- extraction -----------------------------------------------------------------------
    def check_upload(self, data: bytes) -> None:
        """Refuse a bad upload from its header (empty, not an image, an unsupported format,
        more than ``max_pixels``), as an extractor would, before it waits in their queues:
        under load that wait was seconds (the soak: a 415 took 7.9 s at the median)."""
        header(data, self.args.max_pixels)

    async def extract(
        self, data: bytes, names: list[str], query: Query
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Features of one upload per extractor, and why any extractor could not run.

        An unreadable image is the client's fault whichever extractor noticed: its
        ``InvalidImage`` is raised, from the header (``check_upload``) before any extractor
        is asked where it shows there.
        """
        self.check_upload(data)
        results = await asyncio.gather(
            *(self.extractors[n].extract(data, query) for n in names), return_exceptions=True
        )
        return self.computed(names, results)

    @staticmethod
    def computed(
        names: list[str], results: list[Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """``extract``'s answer from each extractor's result or exception."""
        feats: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, InvalidImage):
                raise InvalidImage(str(result), result.status)
            if isinstance(result, WeightsUnavailable):
                failed[name] = f"unavailable: {reason(result)}"
            elif isinstance(result, BaseException):
                log.error("extractor %s failed: %s", name, reason(result))
                failed[name] = f"error: {reason(result)}"
            else:
                feats[name] = result
        return feats, failed

    @staticmethod
    def searchable(queries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Query features minus those with nothing to match (no keypoint, no word); an
        ``InvalidInput`` when none is left."""
        gone = [n for n, q in queries.items() if kind_of(n).is_empty(q)]
        if gone and len(gone) == len(queries):
            what = " or ".join(dict.fromkeys(kind_of(n).lacks for n in gone))
            raise InvalidInput(f"no {what} found in this image: nothing to match")
        return {n: q for n, q in queries.items() if n not in gone}

    async def queries(
        self, data: Data, names: list[str], mode: Query = True
    ) -> dict[str, np.ndarray]:
        """Searchable query features of an upload (``mode``: see ``query_mode``);
        ``Unavailable`` when none was computed."""
        queries, failed = await self.extract(await read(data), names, query=mode)
        if not queries:
            raise Unavailable(f"no feature could be computed: {failed}")
        return self.searchable(queries)

    def duplicates_source(self, what: str) -> str:
        """The feature that finds near-duplicates (phash); ``Unavailable`` naming ``what``
        needs it when it is disabled or its index is not open."""
        if "phash" not in self.extractors:
            raise Unavailable(f"{what} needs the phash feature, which is disabled")
        return self.features("phash")[0]

    async def known(self, image_id: int) -> str:
        """The file name of a stored image; ``UnknownImage`` otherwise."""
        names = await self.client.names([image_id])
        if image_id not in names:
            raise UnknownImage(f"no image with id {image_id}")
        return names[image_id]

    # --- searches -------------------------------------------------------------------------
    async def search(
        self,
        queries: dict[str, np.ndarray],
        k: int | None,
        thresholds: Mapping[str, float | None] | None = None,
        options: Mapping[str, dict[str, Any]] | None = None,
    ) -> dict[str, list[Hit]]:
        """Each feature's hits for its query, searched concurrently."""
        thresholds, options = thresholds or {}, options or {}
        lists = await asyncio.gather(
            *(
                self.client.search(n, q, k, thresholds.get(n), **options.get(n, {}))
                for n, q in queries.items()
            )
        )
        return dict(zip(queries, lists, strict=True))

    async def search_image(
        self,
        data: Data,
        k: int | None,
        features: str | None,
        values: Options,
        duplicate_threshold: float | None = None,
        duplicates_only: bool = False,
    ) -> SearchResult:
        """Fused search by an upload (phash also searches the mirrored image); with
        ``duplicates_only`` just the near-duplicates."""
        kk = self.k(k)
        names = ["phash"] if duplicates_only else self.features(features, self.visual)
        options = {n: self.options(n, values) for n in names}
        if duplicates_only:
            self.duplicates_source("duplicates_only")
        dup = (
            self.args.fusion.duplicate_threshold
            if duplicate_threshold is None
            else duplicate_threshold
        )
        k_each = kk if duplicates_only else max(kk, self.args.fusion.candidates)
        thresholds = {"phash": dup} if duplicates_only else {}
        lists = await self.extract_and_search(
            await read(data), names, k_each, thresholds, options, self.query_mode(names)
        )
        return await self.fused(lists, kk, dup)

    @staticmethod
    def query_mode(names: list[str]) -> Query:
        """``FUSED`` when a whole-image feature (phash, global, CLIP) is among the searched
        ones, which finds the photo itself, so that local features may read the query at a
        bounded size and only look for crops; a plain query otherwise."""
        whole = [n for n in names if kind_of(n).visual and REGISTRY[n].kind != "keypoints"]
        return FUSED if whole and len(whole) < len(names) else True

    async def extract_and_search(
        self,
        data: bytes,
        names: list[str],
        k: int | None,
        thresholds: Mapping[str, float | None],
        options: Mapping[str, dict[str, Any]],
        mode: Query = True,
    ) -> dict[str, list[Hit]]:
        """``queries`` then ``search``, with each feature's index searched as soon as its
        own query feature is ready: the fast sources' searches overlap the slow extractors
        (local features, networks). The answer, and the error when there is one, are those
        of the two steps in turn: a bad image, then no feature computed, then nothing to
        match, then a failed search (the first in ``names`` order). ``mode``: the query
        mode (``query_mode``)."""
        self.check_upload(data)

        async def one(name: str) -> tuple[Any, Any]:
            try:
                query = await self.extractors[name].extract(data, mode)
            except Exception as exc:
                return exc, None
            if isinstance(query, InvalidImage) or kind_of(name).is_empty(query):
                return query, None
            try:
                hits = await self.client.search(
                    name, query, k, thresholds.get(name), **options.get(name, {})
                )
            except Exception as exc:
                return query, exc
            return query, hits

        results = dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))
        queries, failed = self.computed(names, [q for q, _ in results.values()])
        if not queries:
            raise Unavailable(f"no feature could be computed: {failed}")
        lists: dict[str, list[Hit]] = {}
        for name in self.searchable(queries):
            hits = results[name][1]
            if isinstance(hits, BaseException):
                raise hits
            lists[name] = hits
        return lists

    async def similar(
        self,
        name: str,
        image_id: int,
        k: int | None,
        threshold: float | None,
        options: Mapping[str, Any],
        itself: bool = False,
    ) -> Similar:
        """Stored images nearest to a stored one by one feature (itself left out unless
        ``itself``), and the shards that did not answer; ``options``: the feature's search
        options."""
        await self.known(image_id)
        try:
            hits = await self.client.search_by_id(
                name, image_id, k, threshold, itself=itself, **options
            )
        except UnknownImage:
            raise UnknownImage(f"image {image_id} has no {name} feature") from None
        missing = hits.missing if isinstance(hits, Hits) else []
        return Similar(results=await self.listing(hits), partial=missing or None)

    # --- answers --------------------------------------------------------------------------
    async def listing(self, hits: list[Hit], names: dict[int, str] | None = None) -> list[Listed]:
        """Hits with their file names (ids deleted meanwhile left out)."""
        names = names if names is not None else await self.client.names([i for i, _ in hits])
        return [
            Listed(image_id=i, file_name=names.get(i), distance=d) for i, d in hits if i in names
        ]

    async def fused(
        self, lists: dict[str, list[Hit]], k: int, dup: float | None = None
    ) -> SearchResult:
        """Weighted reciprocal-rank fusion of the lists, and each list's first ``k``."""
        weights = {n: self.args.features[n].weight for n in lists}
        fused = fuse(lists, weights, self.args.fusion.rank_constant, "phash", dup)[:k]
        ids = {i for hits in lists.values() for i, _ in hits[:k]} | {f.image_id for f in fused}
        names = await self.client.names(sorted(ids))
        partial = {n: h.missing for n, h in lists.items() if isinstance(h, Hits) and h.missing}
        return SearchResult(
            partial=partial or None,
            results=[
                FusedHit(
                    image_id=f.image_id,
                    file_name=names.get(f.image_id),
                    score=f.score,
                    duplicate=f.duplicate,
                    matches={s: Match(**m) for s, m in f.matches.items()},
                )
                for f in fused
                if f.image_id in names
            ],
            by_feature={n: await self.listing(h[:k], names) for n, h in lists.items()},
        )
