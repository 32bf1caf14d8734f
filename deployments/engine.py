"""The engine: ingest and search over the extractors and the index client, without HTTP.

It speaks in domain errors (``index_actors.interface``: invalid input, unknown image,
conflict, unavailable, backend down; ``InvalidImage`` for a bad upload) and typed results
(``deployments.schemas``); the routers only parse and shape. Ray-free: a unit test runs it
with in-process extractors (``LocalExtractor``) and indexes (``IndexClient.local``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from deployments.config import AppArgs
from deployments.duplicates import DuplicateFinder
from deployments.ports import ExtractorPort
from deployments.schemas import (
    Added,
    DuplicateGroup,
    Duplicates,
    GroupImage,
    Health,
    ImageInfo,
)
from deployments.search import Data, read
from deployments.text_search import TextSearches
from extractors.textdoc import decode_doc, merge_docs
from index_actors.client import IndexClient
from index_actors.interface import (
    NO_SPACE,
    BackendDown,
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
    UnknownImage,
    reason,
    storage_full,
)
from index_actors.kinds import kind_of

log = logging.getLogger("ray.serve")
#: The feature that keeps each image's thumbnail for the page.
THUMBNAIL = "thumbnail"


class Engine(TextSearches):
    """Adds, deletes, describes, analyzes and searches; see the module docstring."""

    def __init__(
        self, args: AppArgs, extractors: Mapping[str, ExtractorPort], client: IndexClient
    ) -> None:
        super().__init__(args, extractors, client)
        self.finder = DuplicateFinder(client)

    # --- writes ---------------------------------------------------------------------------
    async def add(
        self,
        data: Data,
        image_id: int | None,
        file_name: str | None,
        names: list[str],
        label: bool = False,
        replace: bool = False,
    ) -> Added:
        """Extract, then store through the index client's write path.

        Nothing is stored for a bad image. A failed write is ``BackendDown``: the client
        retries, which is safe since re-adding replaces. ``names``: the features to store;
        one without an index is answered "unavailable". ``label``: the name came from the
        upload, not the client, so it does not identify an image. ``replace``: for an image
        that exists, features this add does not compute are removed.
        """
        data = await read(data)
        if file_name is not None:
            _check_file_name(file_name)
        # A feature without an open index (its model's weights missing, say) is reported,
        # not computed: there is nowhere to store it.
        missing = self.client.missing
        absent = {n: f"unavailable: {missing[n]}" for n in names if n in missing}
        feats, status = await self.extract(data, [n for n in names if n not in absent], False)
        status.update(absent)
        if not feats:
            raise Unavailable(f"no feature could be computed: {status}")
        columns = {n: f[None, :] for n, f in feats.items()}
        (stored,) = await self.client.store([(file_name, image_id)], columns, label, replace)
        if stored.conflict is not None:
            raise Conflict(stored.conflict)
        # The writes of the features computed now; the removal of the others a re-add does
        # (``replace``) keeps their own status (unavailable, say), or fails the add below.
        status.update({n: s for n, s in stored.status.items() if n in feats})
        if not stored.ok:
            writes = stored.status
            if any(NO_SPACE in s for s in writes.values()):
                raise storage_full(f"image {stored.image_id} was not stored: {writes}")
            if not stored.existed:
                raise BackendDown(f"the image was not stored, retry: {writes}")
            raise BackendDown(f"image {stored.image_id} was not stored completely, retry: {writes}")
        assert stored.image_id is not None and stored.file_name is not None
        return Added(
            image_id=stored.image_id,
            file_name=stored.file_name,
            features={n: status[n] for n in names},
        )

    async def delete(self, image_id: int, names: list[str] | None = None) -> None:
        """Remove an image's features (all by default, then the image itself)."""
        await self.known(image_id)
        await self.client.delete(image_id, names)

    async def id_of(self, file_name: str) -> int:
        """The id of a stored file name; ``UnknownImage`` otherwise."""
        image_id = await self.client.id_of(file_name)
        if image_id is None:
            raise UnknownImage(f"no image with file name {file_name!r}")
        return image_id

    async def describe(self, image_id: int, file_name: str | None = None) -> ImageInfo:
        """What is stored for an image: its features, tags, caption and text."""
        name = file_name if file_name is not None else await self.known(image_id)
        feats, found = await asyncio.gather(
            self.client.features_of(image_id), self.client.docs(self.textual, image_id)
        )
        doc = merge_docs(found)
        return ImageInfo(
            image_id=image_id,
            file_name=name,
            features=feats,
            tags=doc.get("tags", []),
            caption=doc.get("caption"),
            text=doc.get("text"),
        )

    async def duplicates(
        self, feature: str, threshold: float | None, page: int, page_size: int
    ) -> Duplicates:
        """One page of the groups of near-duplicates over the whole collection: connected
        components of the pairs within ``threshold`` (phash: mirrored copies included;
        default: the app's near-duplicate threshold), largest first."""
        names = self.features(feature)
        if len(names) != 1:
            raise InvalidInput(f"give one feature, not {feature!r}")
        name, kind = names[0], kind_of(names[0])
        if not kind.groups:
            able = ", ".join(n for n in self.indexed if kind_of(n).groups)
            raise InvalidInput(f"{name} cannot group duplicates; features that can: {able}")
        limit = kind.group_threshold(threshold, self.args.fusion.duplicate_threshold)
        found = await self.finder.groups(name, limit)
        shown = found[(page - 1) * page_size : page * page_size]
        found_names = await self.client.names([i for g in shown for i in g.ids])
        return Duplicates(
            feature=name,
            threshold=limit,
            page=page,
            pages=max(1, -(-len(found) // page_size)),
            total_groups=len(found),
            groups=[
                DuplicateGroup(
                    images=[GroupImage(image_id=i, file_name=found_names.get(i)) for i in g.ids],
                    pairs=g.pairs,
                )
                for g in shown
            ],
        )

    async def thumbnail(self, image_id: int) -> bytes:
        """An image's stored thumbnail (WebP); ``NotFound`` when thumbnails are off, the
        image is unknown, or it was stored before thumbnails (the message says how to make
        them)."""
        if THUMBNAIL not in self.extractors:
            raise NotFound("thumbnails are off in this app (features: thumbnail: enabled)")
        if THUMBNAIL in self.client.missing:
            raise Unavailable(f"thumbnails are unavailable: {self.client.missing[THUMBNAIL]}")
        (found,) = await self.client.docs([THUMBNAIL], image_id)
        if isinstance(found, bytes):
            return found
        name = await self.known(image_id)
        raise NotFound(
            f"image {image_id} ({name}) has no thumbnail: it was stored before thumbnails. "
            '`make ingest DIR=<its folder> ARGS="--features thumbnail"` makes them'
        )

    async def analyze(
        self, data: Data, wanted: tuple[str, ...], what: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The merged text document of an upload from the ``wanted`` extractors that are
        enabled, and why any of them could not run; ``Unavailable`` when none is enabled or
        none could run (``what`` names them in the message)."""
        names = [n for n in wanted if n in self.extractors]
        if not names:
            raise Unavailable(f"no {what} is enabled in this app")
        feats, failed = await self.extract(await read(data), names, query=False)
        if not feats:
            raise Unavailable(f"no {what} could run: {failed}")
        return merge_docs(decode_doc(f) for f in feats.values()), failed

    @property
    def text_extractors(self) -> tuple[str, ...]:
        """Enabled extractors whose feature is text."""
        return tuple(n for n in self.extractors if kind_of(n).reads_text)

    async def health(self) -> Health:
        """Every extractor (available, or why not) and every index (count)."""
        infos, (described, images) = await asyncio.gather(
            asyncio.gather(*(e.info() for e in self.extractors.values()), return_exceptions=True),
            self.client.describe(),
        )
        extractors = {
            n: info
            if not isinstance(info, BaseException)
            else {"available": False, "reason": f"error: {reason(info)}", "error": True}
            for n, info in zip(self.extractors, infos, strict=True)
        }
        indexes: dict[str, Any] = {
            n: d if not isinstance(d, BaseException) else {"error": reason(d)}
            for n, d in described.items()
        }
        missing = self.client.missing
        indexes.update({n: {"error": f"no index: {why}"} for n, why in missing.items()})
        # An extractor without weights is a known state of this install (its reason says
        # how to fix it), not a fault: "degraded" is for what should work and does not.
        ok = (
            not any(e.get("error") for e in extractors.values())
            and all("count" in i for n, i in indexes.items() if n not in missing)
            and not isinstance(images, BaseException)
        )
        return Health(
            status="ok" if ok else "degraded",
            extractors=extractors,
            indexes=indexes,
            images=images if not isinstance(images, BaseException) else f"error: {images}",
        )


def _check_file_name(name: str) -> None:
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise InvalidInput("file_name is not valid Unicode text") from None
    if not name.strip() or size > 255:
        raise InvalidInput("file_name must be 1 to 255 bytes of UTF-8")
