"""The one write path of the index client (``IndexClient.store``): register the images,
write every feature to the shard that owns it, and take a new image out again when its
write failed, so that nothing is half visible. Deletes go to the owners too."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_actors import shards
from index_actors.interface import NO_SPACE, BackendDown, reason, storage_full

log = logging.getLogger(__name__)


@dataclass
class Stored:
    """What the write path did with one image."""

    image_id: int | None
    file_name: str | None
    #: Feature -> "ok" or "error: ..." for each feature written.
    status: dict[str, str] = field(default_factory=dict)
    #: Whether the image was known before this write.
    existed: bool = False
    #: Why the image was not registered (a file name of another id); None when it was.
    conflict: str | None = None

    @property
    def ok(self) -> bool:
        """Registered, and every feature written."""
        return self.conflict is None and all(s == "ok" for s in self.status.values())


class WritePath:
    """``IndexClient``'s writes; it needs the client's ``catalog``, ``shards``, ``features``
    and ``names`` / ``ids_of``."""

    catalog: Any
    shards: dict[str, list[Any]]
    #: How long a write (or a lookup by id) waits for its shard: one whose node is down
    #: waits for it to return, and its callers get "retry" meanwhile.
    write_timeout_s: float = 30.0

    async def within(
        self, feature: str, shard: int, call: Any, seconds: float | None = None
    ) -> Any:
        """A call to a shard's actor, given up with ``BackendDown`` ("retry") after
        ``seconds`` (default ``write_timeout_s``). A write given up still happens when the
        shard returns (Ray keeps the call): the write path undoes a new image's."""
        limit = self.write_timeout_s if seconds is None else seconds
        try:
            return await asyncio.wait_for(call, limit)
        except TimeoutError:
            role = shards.role(feature, shard, len(self.shards[feature]))
            raise BackendDown(
                f"{role} did not answer within {limit:g} s (is its node down?), retry"
            ) from None

    @property
    def features(self) -> list[str]:
        """The features with an open index, in config order."""
        return list(self.shards)

    def owner(self, feature: str, image_id: int) -> Any:
        """The index actor of the shard that owns an image's feature."""
        actors = self.shards[feature]
        return actors[shards.owner(image_id, len(actors))]

    async def ask_owner(
        self,
        feature: str,
        image_id: int,
        method: str,
        *args: Any,
        seconds: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """``method(*args, **kwargs)`` of the shard that owns an image, within ``seconds``."""
        shard = shards.owner(image_id, len(self.shards[feature]))
        call = getattr(self.shards[feature][shard], method).remote(*args, **kwargs)
        return await self.within(feature, shard, call, seconds)

    async def names(self, ids: list[int]) -> dict[int, str]:
        """File names of the known ids among ``ids``."""
        return await self.catalog.name_of.remote(ids) if ids else {}

    async def ids_of(self, file_names: list[str]) -> list[int | None]:
        """Ids of file names (None where unknown)."""
        return await self.catalog.ids_of.remote(file_names)

    async def store(
        self,
        images: list[tuple[str | None, int | None]],
        features: Mapping[str, Any],
        labels: bool = False,
        replace: bool = False,
    ) -> list[Stored]:
        """The write path: register ``images`` (file name, id or None), then write each
        feature's rows (aligned with ``images``) to its index.

        An image is acknowledged only once every feature is written. When a write fails, an
        image that was new is taken out again (its written features, then its catalog entry),
        so that nothing is half visible under an id a retry will not reuse; one that existed
        keeps what it had (a retry replaces it). ``labels``: the names came from uploads and
        only label the images (each gets a new id). ``replace``: for an image that existed,
        features not written now are removed, since they described what the id held before.
        A name conflict costs only its own image (``Stored.conflict``).

        One writer per image: each image's id is held in the catalog from its registration
        to the end of this write, and a concurrent write of the same image waits for it
        (``Catalog.claim``), so that its features all come from one upload.
        """
        token = uuid.uuid4().hex
        registered = await self._claim(images, labels, token)
        try:
            return await self._write(images, registered, features, replace, token)
        finally:
            held = [got[0] for got in registered if not isinstance(got, str)]
            await self.catalog.release.remote(held, token)

    async def _write(
        self,
        images: list[tuple[str | None, int | None]],
        registered: list[tuple[int, str, bool] | str],
        features: Mapping[str, Any],
        replace: bool,
        token: str,
    ) -> list[Stored]:
        """``store``'s writes, once its images are registered and held by ``token``."""
        out = [
            Stored(None, name, conflict=got)
            if isinstance(got, str)
            else Stored(got[0], got[1], existed=got[2])
            for (name, _), got in zip(images, registered, strict=True)
        ]
        rows = [j for j, s in enumerate(out) if s.conflict is None]
        if not rows:
            return out
        ids = [i for j in rows if (i := out[j].image_id) is not None]
        written = list(features)
        # One call per feature and owning shard; each image's status is its own call's.
        calls: list[tuple[str, list[int], Any]] = []
        adds: dict[tuple[str, int], Any] = {}
        for f in written:
            column = take_rows(features[f], rows)
            for s, a, pos in self._groups(f, ids):
                adds[f, s] = a.add.remote([ids[p] for p in pos], take_rows(column, pos))
                calls.append((f, pos, self.within(f, s, adds[f, s])))
        stale = [f for f in self.shards if f not in features] if replace else []
        old = [j for j, i in enumerate(ids) if out[rows[j]].existed]
        for f in stale if old else []:
            calls += [
                (
                    f,
                    [old[p] for p in pos],
                    self.within(f, s, a.remove.remote([ids[old[p]] for p in pos])),
                )
                for s, a, pos in self._groups(f, [ids[j] for j in old])
            ]
        results = await asyncio.gather(*(c for _, _, c in calls), return_exceptions=True)
        for (f, positions, _), result in zip(calls, results, strict=True):
            state = "ok" if not isinstance(result, BaseException) else f"error: {reason(result)}"
            for p in positions:
                out[rows[p]].status[f] = state
        failed = [out[j] for j in rows if not out[j].ok and not out[j].existed]
        if failed:  # its hold lasts one phase: renewed for the withdrawal
            renew = [s.image_id for s in failed if s.image_id is not None]
            await self.catalog.hold.remote(renew, token, self.hold_s)
        await self._withdraw(failed, written, adds)
        return out

    @property
    def hold_s(self) -> float:
        """How long a hold lasts unless renewed: one phase of a write (its feature writes, or
        its withdrawal, each given up after ``write_timeout_s``), and a margin. A writer that
        died (a killed ingest worker) frees its images once it lapses."""
        return self.write_timeout_s + 10.0

    async def _claim(
        self, images: list[tuple[str | None, int | None]], labels: bool, token: str
    ) -> list[tuple[int, str, bool] | str]:
        """Register ``images`` for the writer ``token`` (``Catalog.claim``): (id, name, known
        before) per image, or why it cannot be registered. An image another write holds is
        asked for again until that write ends, or its hold lapses (``hold_s``); then
        ``BackendDown`` ("retry"), with nothing held."""
        got: list[tuple[int, str, bool] | str | None] = [None] * len(images)
        waiting = list(range(len(images)))
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.hold_s + 1.0, 0.01
        while True:
            try:
                answers = await self.catalog.claim.remote(
                    [images[j] for j in waiting], labels, token, self.hold_s
                )
            except Exception as exc:
                if NO_SPACE in reason(exc):  # the catalog's commit: nothing registered
                    raise storage_full(f"the catalog: {reason(exc)}") from None
                raise
            for j, answer in zip(waiting, answers, strict=True):
                got[j] = answer
            waiting = [j for j in waiting if got[j] is None]
            if not waiting:
                return [g for g in got if g is not None]
            if loop.time() > deadline:
                held = [g[0] for g in got if isinstance(g, tuple)]
                await self.catalog.release.remote(held, token)
                raise BackendDown(
                    f"another request has been writing {len(waiting)} of these images for "
                    f"{self.hold_s + 1:g} s, retry"
                )
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.2)

    async def _hold(self, image_id: int, token: str) -> None:
        """Hold one image for the writer ``token`` (a delete), waiting for another write of it
        to end, or its hold to lapse; ``BackendDown`` ("retry") after that."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.hold_s + 1.0, 0.01
        while not await self.catalog.hold.remote([image_id], token, self.hold_s):
            if loop.time() > deadline:
                raise BackendDown(f"another request has been writing image {image_id}, retry")
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.2)

    async def _withdraw(
        self, failed: list[Stored], written: list[str], adds: dict[tuple[str, int], Any]
    ) -> None:
        """Take new images out after a failed write: their features, then their catalog
        entries. The features written fine must go, now; a write that failed may yet run
        (its shard's node was down: Ray keeps the call), so its removal is sent once it has
        (``adds``: each write's call). Best effort: an image whose written feature cannot be
        removed now stays registered, and is logged."""
        ids = [s.image_id for s in failed if s.image_id is not None]
        if not ids:
            return
        undo = []
        for f in written:
            for s, a, pos in self._groups(f, ids):
                mine = [ids[p] for p in pos]
                if any(failed[p].status.get(f) == "ok" for p in pos):
                    undo.append((f, pos, self.within(f, s, a.remove.remote(mine))))
                else:
                    _after(adds.get((f, s)), a, mine)
        results = await asyncio.gather(*(c for _, _, c in undo), return_exceptions=True)
        stuck = {
            p
            for (f, pos, _), result in zip(undo, results, strict=True)
            if isinstance(result, BaseException)
            for p in pos
            if failed[p].status.get(f) == "ok"
        }
        if stuck:
            log.error("images %s: features stay after a failed add", [ids[p] for p in stuck])
        await asyncio.gather(
            *(self.catalog.unregister.remote(i) for p, i in enumerate(ids) if p not in stuck)
        )

    def _groups(self, feature: str, ids: list[int]) -> list[tuple[int, Any, list[int]]]:
        """(shard, its actor, positions in ``ids``) for each shard that owns some of ``ids``."""
        actors = self.shards[feature]
        return [(s, actors[s], pos) for s, pos in shards.by_owner(ids, len(actors)).items()]

    async def delete(self, image_id: int, features: Sequence[str] | None = None) -> None:
        """Remove an image's features (all by default, then the image itself), as the one
        writer of the image meanwhile (``store``)."""
        token = uuid.uuid4().hex
        await self._hold(image_id, token)
        try:
            targets = list(features) if features is not None else self.features
            await asyncio.gather(
                *(self.ask_owner(f, image_id, "remove", [image_id]) for f in targets)
            )
            if features is None:
                await self.catalog.unregister.remote(image_id)
        finally:
            await self.catalog.release.remote([image_id], token)


def take_rows(column: Any, rows: list[int]) -> Any:
    """The rows of a feature column for the registered images (a contiguous array where the
    column is one, a list of arrays for a ragged one)."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return np.ascontiguousarray(column[rows])
    return [column[j] for j in rows]


#: Removals waiting for the write they undo (kept referenced until done).
_PENDING: set[asyncio.Future[Any]] = set()


def _after(write: Any, actor: Any, ids: list[int]) -> None:
    """Remove ``ids`` from a shard once ``write`` (its call) has run, whatever it gave:
    sent before, a removal could run first on the actor's threads and be undone by it."""

    async def remove() -> None:
        if write is not None:
            await asyncio.gather(write, return_exceptions=True)
        try:
            await actor.remove.remote(ids)
        except Exception:
            log.exception("images %s: a failed write was not undone", ids)

    task = asyncio.ensure_future(remove())
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
