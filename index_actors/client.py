"""The index client: the one way to an app's catalog and index actors. It gets or creates
them (``index_actors/actors.py`` names them), routes each image to the shard that owns it,
searches every shard and merges, and writes an image the one way (``index_actors/writes.py``:
register, write every feature, take a new image out again when a write fails) and searches
them the one way (``index_actors/reads.py``: every shard at once, merged). The ingress,
Ray Data ingest, ``train_index.py`` and the benchmarks all go through it.

Its methods are coroutines over actor handles: a Ray actor's ``method.remote()`` gives an
awaitable ref; ``LocalActor`` gives the same shape for a plain object in this process, so the
engine runs in a unit test without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index_actors import shards
from index_actors.actor import LocalActor
from index_actors.actors import IndexSpec, actor_name, catalog_actor, index_actor, index_shards
from index_actors.interface import reason
from index_actors.placement import Layout, Placement, choose, data_nodes, spread
from index_actors.reads import ReadPath
from index_actors.reshard import LocalOpener
from index_actors.store import Catalog
from index_actors.writes import Stored, take_rows

log = logging.getLogger(__name__)


class IndexClient(ReadPath):
    """An app's catalog and index actors (handles), and what is done with them.

    ``shards[feature]`` lists a feature's index actors; an image's features live in the
    shard that owns its id (``index_actors.shards.owner``), searches ask every shard.
    """

    def __init__(
        self,
        catalog: Any,
        indexes: Mapping[str, Any | list[Any]],
        missing: Mapping[str, str],
        timeout_s: float = 10.0,
        write_timeout_s: float = 30.0,
        expansions: Mapping[str, int] | None = None,
    ):
        self.catalog = catalog
        #: Inner-product vector features -> their configured query expansion (``aqe_n``): a
        #: sharded search that expands does so across the shards.
        self.expansions = dict(expansions or {})
        #: How long a search (or a lookup) waits for a shard before answering without it.
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s
        self.shards = {f: a if isinstance(a, list) else [a] for f, a in indexes.items()}
        #: Enabled features without an index, and why (a model whose width is unknown, an
        #: index that could not open); their routes answer 503 with the reason.
        self.missing = dict(missing)

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        app_name: str,
        data_dir: str,
        specs: Mapping[str, IndexSpec],
        snapshot_interval_s: float = 30.0,
        num_cpus: float = 0.0,
        timeout_s: float = 10.0,
        placement: Placement | None = None,
        write_timeout_s: float = 30.0,
        dormant: Mapping[str, str] | None = None,
    ) -> IndexClient:
        """Get or create the app's actors with these settings (what ``graph.py`` does): the
        catalog on the head, each feature's shards on the nodes its recorded layout names
        (a new layout spread over the data nodes up now: ``index_actors/placement.py``).

        ``dormant``: features whose model cannot run (weights missing), and why. Such a
        feature gets no actor (~75 MiB each) while its index holds nothing: it is missing,
        with that reason, until a redeploy finds its weights. One that holds images keeps
        its actors, so that deletes still reach them. One opened before that every shard
        answers is empty is stopped and marked so (``Catalog.set_dormant``): later starts
        skip it without starting an actor, and its recorded layout (the nodes of its
        shards) stays for when its model can run again.
        """
        import ray
        from ray.exceptions import RayError

        placement = placement or Placement()
        dormant = dormant or {}
        nodes = data_nodes(placement.label)
        catalog = catalog_actor(app_name, data_dir)
        images = ray.get(catalog.count.remote())
        missing: dict[str, str] = {}
        indexes: dict[str, list[Any]] = {}
        for name, spec in specs.items():
            if isinstance(spec.dim, str):
                missing[name] = spec.dim
                continue
            raw = ray.get(catalog.layout.remote(name))
            recorded = Layout.from_dict(raw) if raw else None
            here = ray.get(catalog.layouts_here.remote(name)) if recorded is None else {}
            # Only a recorded layout can be dormant: no second call for the others.
            asleep = recorded is not None and ray.get(catalog.dormant.remote(name))
            if name in dormant and (asleep or (recorded is None and not here)):
                missing[name] = dormant[name]  # found empty, or never held an image
                continue
            if asleep:  # its model can run again
                ray.get(catalog.set_dormant.remote(name, False))
            fresh = spread(spec.shards, nodes, placement.shared)
            layout = choose(spec.shards, recorded, here, images, fresh)
            if isinstance(layout, str):
                missing[name] = f"index unavailable: {data_dir}/{name} {layout}"
                continue
            if layout != recorded:
                ray.get(catalog.set_layout.remote(name, layout.to_dict()))
            try:
                indexes[name] = index_shards(
                    app_name,
                    name,
                    spec,
                    data_dir,
                    layout,
                    placement,
                    snapshot_interval_s,
                    num_cpus,
                    timeout_s,
                )
            except RayError as exc:  # a store of another model's features, say
                log.error("index of %s unavailable: %s", name, exc)
                missing[name] = f"index unavailable: {reason(exc)}"
                continue
            if name in dormant and _empty(indexes[name], timeout_s):
                # Opened before, while its model could run, and nothing kept. Marked before
                # the kill: an add that lands in between (an old replica during a redeploy)
                # is in a store that opens again with the recorded layout.
                ray.get(catalog.set_dormant.remote(name, True))
                for actor in indexes.pop(name):
                    ray.kill(actor, no_restart=True)
                missing[name] = dormant[name]
        return cls(catalog, indexes, missing, timeout_s, write_timeout_s, _expansions(specs))

    @classmethod
    def connect(cls, app_name: str, shard_counts: Mapping[str, int]) -> IndexClient:
        """The running app's actors of these features (each with its shard count) for the
        scripts; ``ValueError`` naming what is not running."""
        import ray

        def get(role: str) -> Any:
            try:
                return ray.get_actor(actor_name(app_name, role), namespace="serve")
            except ValueError:
                raise ValueError(
                    f"no actor {actor_name(app_name, role)!r}: is the app running (make serve)? "
                    "(A model's index has none while its weights are missing: /health says.)"
                ) from None

        indexes = {
            f: [get(shards.role(f, i, n)) for i in range(n)] for f, n in shard_counts.items()
        }
        return cls(get("catalog"), indexes, {})

    @classmethod
    def local(cls, data_dir: str | Path, specs: Mapping[str, IndexSpec]) -> IndexClient:
        """The same indexes hosted in this process, without Ray (unit tests, tools)."""
        indexes = {
            name: LocalOpener(str(data_dir), name, spec).open(spread(spec.shards, []), None)
            for name, spec in specs.items()
            if isinstance(spec.dim, int)
        }
        missing = {n: s.dim for n, s in specs.items() if isinstance(s.dim, str)}
        catalog = LocalActor(Catalog(Path(data_dir) / "catalog"))
        return cls(catalog, indexes, missing, expansions=_expansions(specs))

    def subset(self, features: Iterable[str]) -> IndexClient:
        """The same actors, only these features' indexes."""
        chosen = {f: self.shards[f] for f in features}
        return IndexClient(
            self.catalog,
            chosen,
            self.missing,
            self.timeout_s,
            self.write_timeout_s,
            self.expansions,
        )

    # --- reading ------------------------------------------------------------------------
    async def id_of(self, file_name: str) -> int | None:
        """The id of a file name, or None."""
        return await self.catalog.id_of.remote(file_name)

    async def has(self, feature: str, ids: list[int]) -> list[int]:
        """The ids among ``ids`` stored in one feature's index (each asked of its shard)."""
        found = await asyncio.gather(
            *(
                self.within(feature, s, a.has.remote([ids[j] for j in rows]), self.timeout_s)
                for s, a, rows in self._groups(feature, ids)
            )
        )
        return sorted(i for present in found for i in present)

    async def features_of(self, image_id: int) -> list[str]:
        """The features stored for an image, in index order."""
        present = await asyncio.gather(
            *(
                self.ask_owner(f, image_id, "has", [image_id], seconds=self.timeout_s)
                for f in self.shards
            )
        )
        return [n for n, has in zip(self.shards, present, strict=True) if has]

    async def stored_everywhere(self, ids: list[int], features: Iterable[str]) -> set[int]:
        """The ids among ``ids`` stored in every one of ``features``' indexes."""
        stored = set(ids)
        if ids:
            for present in await asyncio.gather(*(self.has(f, ids) for f in features)):
                stored &= set(present)
        return stored

    async def stored(self, feature: str, page: int = 20_000) -> tuple[np.ndarray, Any]:
        """Every stored (id, feature) of one feature, from every shard, page by page (the
        duplicate finder compares them all): the ids, and the features as one array when
        they have one width, else a list; ``BackendDown`` when a shard does not answer."""
        pages: list[tuple[list[int], Any]] = []

        async def read(shard: int, actor: Any) -> None:
            after = -1
            while True:
                got, values = await self.within(
                    feature, shard, actor.export.remote(after, page), self.write_timeout_s
                )
                if not got:
                    return
                pages.append((got, values))
                after = got[-1]

        await asyncio.gather(*(read(s, a) for s, a in enumerate(self.shards[feature])))
        ids = np.asarray([i for got, _ in pages for i in got], np.int64)
        blocks = [values for _, values in pages]
        if (
            all(isinstance(b, np.ndarray) for b in blocks)
            and len({b.shape[1:] for b in blocks}) < 2
        ):
            return ids, np.concatenate(blocks) if blocks else np.zeros((0, 0), np.uint8)
        return ids, [row for block in blocks for row in block]

    async def generations(self, feature: str) -> tuple[int, ...]:
        """Each shard's count of committed writes: unchanged numbers mean unchanged data."""
        return tuple(
            await asyncio.gather(
                *(
                    self.within(feature, s, a.generation.remote(), self.timeout_s)
                    for s, a in enumerate(self.shards[feature])
                )
            )
        )

    async def docs(self, features: Sequence[str], image_id: int) -> list[dict[str, Any]]:
        """An image's stored text documents, one per text feature (empty where none)."""
        found = await asyncio.gather(
            *(
                self.ask_owner(f, image_id, "docs", [image_id], seconds=self.timeout_s)
                for f in features
            )
        )
        return [got.get(image_id, {}) for got in found]

    async def describe(self) -> tuple[dict[str, Any], int | BaseException]:
        """Each index's description (or the error of one that failed; sharded: the counts
        summed and each shard's own), and the image count."""
        *described, images = await asyncio.gather(
            *(
                self.within(f, i, a.describe.remote(), self.timeout_s)
                for f, actors in self.shards.items()
                for i, a in enumerate(actors)
            ),
            self.catalog.count.remote(),
            return_exceptions=True,
        )
        each = iter(described)
        out = {
            f: next(each) if len(actors) == 1 else shards.combined([next(each) for _ in actors])
            for f, actors in self.shards.items()
        }
        return out, images

    # --- training -----------------------------------------------------------------------
    async def sample(self, feature: str, n: int, seed: int = 0) -> np.ndarray:
        """Training data drawn across the shards: about ``n`` rows, each shard's share in
        proportion to its count."""
        actors = self.shards[feature]
        counts = await asyncio.gather(*(a.count.remote() for a in actors))
        total = max(1, sum(counts))
        parts = await asyncio.gather(
            *(
                a.sample.remote(max(1, round(n * c / total)), seed + i)
                for i, (a, c) in enumerate(zip(actors, counts, strict=True))
                if c
            )
        )
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    async def adopt(
        self, feature: str, trained: bytes | None, whitening: bytes | None
    ) -> dict[str, Any]:
        """Every shard switches to the same trained index (each fills it from its store)."""
        done = await asyncio.gather(
            *(a.adopt.remote(trained, whitening) for a in self.shards[feature])
        )
        return done[0] if len(done) == 1 else shards.combined(list(done))


def _empty(actors: list[Any], timeout_s: float) -> bool:
    """Whether every shard answers that it holds nothing (one that does not answer may)."""
    import ray
    from ray.exceptions import RayError

    refs = [a.count.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    try:
        return len(ready) == len(refs) and not any(ray.get(ready))
    except RayError:  # a store that cannot count (PostgreSQL down) may hold images
        return False


def _expansions(specs: Mapping[str, IndexSpec]) -> dict[str, int]:
    """The features that can expand a query (inner-product vectors), with their configured
    ``aqe_n`` (0 when not set, the index's default)."""
    return {
        n: int(s.options.get("aqe_n") or 0)
        for n, s in specs.items()
        if s.kind == "vector" and s.options.get("metric") == "ip"
    }


__all__ = [
    "IndexClient",
    "IndexSpec",
    "Stored",
    "actor_name",
    "catalog_actor",
    "index_actor",
    "index_shards",
    "take_rows",
]
