"""The collection-wide duplicate finder behind ``GET /duplicates`` (Ray-free).

Grouping compares every stored image with every other (``index_actors/duplicates.py``): for
phash, an exact multi-index search in seconds at 100k images, not per request. Its groups
are kept per feature and threshold until that feature's data changes (each shard's count of
committed writes), so paging through them costs a lookup.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from extractors import REGISTRY
from index_actors.client import IndexClient
from index_actors.kinds import kind_of

if TYPE_CHECKING:  # numba is imported where a grouping runs, not by every ingress
    from index_actors.duplicates import Group

#: Groupings kept (feature and threshold); each is small next to the data it came from.
KEPT = 4


class DuplicateFinder:
    """Groups of near-duplicates of one feature within a threshold, kept until the data
    changes; concurrent requests for one grouping share one computation."""

    def __init__(self, client: IndexClient) -> None:
        self.client = client
        self._kept: dict[tuple[str, float], tuple[tuple[int, ...], list[Group]]] = {}
        self._running: dict[tuple[Any, ...], asyncio.Future[list[Group]]] = {}

    async def groups(self, feature: str, threshold: float) -> list[Group]:
        """The groups, largest first (see ``index_actors.duplicates.groups``)."""
        key = (feature, threshold)
        generations = await self.client.generations(feature)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == generations:
            return kept[1]
        job = (*key, generations)
        running = self._running.get(job)
        if running is None or running.get_loop() is not asyncio.get_running_loop():
            running = asyncio.ensure_future(self._compute(feature, threshold, generations))
            self._running[job] = running
            running.add_done_callback(lambda _: self._running.pop(job, None))
        # Shielded: a request that goes away does not cancel the others' computation.
        return await asyncio.shield(running)

    async def _compute(
        self, feature: str, threshold: float, generations: tuple[int, ...]
    ) -> list[Group]:
        # Read after the generations: a write in between makes the next call compute
        # again, never keeps a stale answer.
        ids, rows = await self.client.stored(feature)
        found = await asyncio.to_thread(_group, feature, ids, rows, threshold)
        self._kept[(feature, threshold)] = (generations, found)
        while len(self._kept) > KEPT:
            self._kept.pop(next(iter(self._kept)))
        return found


def _group(feature: str, ids: Any, rows: Any, threshold: float) -> list[Group]:
    from index_actors.duplicates import groups

    if len(ids) < 2:
        return []
    cls = REGISTRY[feature]
    kind = kind_of(feature)
    a, b, dist = kind.pairs(ids, rows, threshold, cls.metric, getattr(cls, "dim", 0))
    return groups(a, b, dist)
