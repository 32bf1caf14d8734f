"""The searches of the index client (``IndexClient.search``, ``search_by_id``): every shard
of a feature at once, merged; a shard that fails or does not answer in time is left out and
named. A sharded vector search with query expansion expands across the shards as one index
would."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from index_actors import shards
from index_actors.interface import BackendDown, Hit, Hits, InvalidInput, NotFound, reason
from index_actors.vector import expanded
from index_actors.writes import WritePath

log = logging.getLogger(__name__)


class ReadPath(WritePath):
    """``IndexClient``'s searches; it needs the client's ``shards``, ``timeout_s`` and
    ``expansions`` (and ``WritePath``'s ``within`` and ``ask_owner``)."""

    #: Inner-product vector features -> their configured query expansion (``aqe_n``).
    expansions: dict[str, int]
    #: How long a search (or a lookup) waits for a shard before answering without it.
    timeout_s: float = 10.0

    async def search(
        self,
        feature: str,
        query: Any,
        k: int | None,
        threshold: float | None = None,
        exclude: int | None = None,
        **options: Any,
    ) -> list[Hit]:
        """One feature's nearest stored images to a query feature (or a text): every shard
        at once, merged. A shard that fails or does not answer within ``timeout_s`` is left
        out and named in ``Hits.missing``; ``BackendDown`` when none answered."""
        actors = self.shards[feature]
        if len(actors) == 1:  # no answer without it: as long as a write would wait
            call = actors[0].search.remote(query, k, threshold, exclude, **options)
            return await self.within(feature, 0, call, max(self.timeout_s, self.write_timeout_s))
        n = options.get("aqe_n")
        if feature in self.expansions and (self.expansions[feature] if n is None else n):
            return await self._search_expanded(feature, query, k, threshold, exclude, **options)
        found, missing = await self._fan(feature, "search", query, k, threshold, exclude, **options)
        return Hits(shards.merge(found.values(), k), missing)

    async def _search_expanded(
        self,
        feature: str,
        query: Any,
        k: int | None,
        threshold: float | None,
        exclude: int | None,
        aqe_n: int | None = None,
        aqe_alpha: float | None = None,
    ) -> list[Hit]:
        """A vector search over several shards with alpha query expansion, expanded as one
        index expands it: every shard's nearest to the query, merged into the n nearest of
        all; every shard's part of the sum over them; then the search by the sum."""
        first, missing = await self._fan(feature, "expansion", query, aqe_n, aqe_alpha)
        prepared, n, alpha, _ = next(iter(first.values()))
        rows = prepared
        if n > 0:
            near = [
                [i for i, _ in shards.merge((got[3][q] for got in first.values()), n)]
                for q in range(len(prepared))
            ]
            parts, more = await self._fan(feature, "expansion_terms", prepared, near, alpha)
            rows, missing = expanded(prepared, sum(parts.values())), missing + more
        found, more = await self._fan(feature, "search_prepared", rows, k, threshold, exclude)
        return Hits(shards.merge(found.values(), k), sorted(set(missing + more)))

    async def _fan(
        self, feature: str, method: str, *args: Any, **kwargs: Any
    ) -> tuple[dict[int, Any], list[str]]:
        """``method`` on every shard of a feature at once: the answers by shard, and the
        shards that failed or did not answer within ``timeout_s``, named. A bad query is
        raised as it is (it is bad for every shard); ``BackendDown`` when none answered."""
        actors = self.shards[feature]
        found = await asyncio.gather(
            *(
                self.within(feature, i, getattr(a, method).remote(*args, **kwargs), self.timeout_s)
                for i, a in enumerate(actors)
            ),
            return_exceptions=True,
        )
        for got in found:
            if isinstance(got, InvalidInput | NotFound):
                raise got
        failed = {
            shards.role(feature, i, len(actors)): got
            for i, got in enumerate(found)
            if isinstance(got, BaseException)
        }
        if len(failed) == len(actors):
            why = "; ".join(f"{m}: {reason(e) or type(e).__name__}" for m, e in failed.items())
            raise BackendDown(f"no shard of {feature} answered, retry: {why}")
        if failed:
            log.warning("%s answered without %s", feature, list(failed))
        answers = {i: got for i, got in enumerate(found) if not isinstance(got, BaseException)}
        return answers, list(failed)

    async def search_by_id(
        self,
        feature: str,
        image_id: int,
        k: int | None,
        threshold: float | None,
        itself: bool = False,
        **options: Any,
    ) -> list[Hit]:
        """One feature's nearest stored images to a stored one, searched by its stored
        feature (the image itself left out unless ``itself``); ``UnknownImage``. Sharded:
        the owner gives the stored query, every shard searches by it."""
        if len(self.shards[feature]) == 1 and not itself:
            return await self.ask_owner(
                feature,
                image_id,
                "search_by_id",
                image_id,
                k,
                threshold,
                seconds=self.timeout_s,
                **options,
            )
        query = await self.ask_owner(
            feature, image_id, "query_of", image_id, seconds=self.timeout_s
        )
        if query is None:  # nothing to match by (a text without words)
            return []
        exclude = None if itself else image_id
        return await self.search(feature, query, k, threshold, exclude, **options)
