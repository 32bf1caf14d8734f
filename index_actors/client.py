"""The index client: the one place that names an app's catalog and index actors, gets or
creates them, and writes an image the one way (register, write every feature, take a new
image out again when a write fails). The ingress, Ray Data ingest, ``train_index.py`` and the
benchmarks all go through it.

Its methods are coroutines over actor handles: a Ray actor's ``method.remote()`` gives an
awaitable ref; ``LocalActor`` gives the same shape for a plain object in this process, so the
engine runs in a unit test without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index_actors import shards
from index_actors.actor import IndexActor, LocalActor
from index_actors.interface import BackendDown, Hit, Hits, reason
from index_actors.kinds import KINDS
from index_actors.store import Catalog

log = logging.getLogger(__name__)


def actor_name(app: str, role: str) -> str:
    """Ray name of an app's actor: ``role`` is ``catalog`` or ``index:<feature>``."""
    return f"{app}:{role}"


@dataclass(frozen=True)
class IndexSpec:
    """One feature's index as the config sets it."""

    kind: str
    #: Width of a feature; a string where it cannot be known (why: an unknown model name).
    dim: int | str
    options: dict[str, Any] = field(default_factory=dict)
    #: Index actors the feature's images are spread over (``index_actors.shards``).
    shards: int = 1


# Actors survive the Serve application (detached), come back after a crash (max_restarts)
# and replay a call that was in flight when they died (max_task_retries): every method is
# safe to repeat, since re-adding an id replaces it. A few retries, not infinite ones: a call
# that itself kills the actor (out of memory) must end in an error, not a restart loop.
_ACTOR_OPTIONS: dict[str, Any] = {
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 3,
}


def _current(make: Any, wanted: dict[str, Any]) -> Any:
    """The named actor ``make()`` gets or creates, replaced if it was made with other settings.

    Detached actors outlive the app: after a config change (another data_dir, metric or
    index option) the old one would otherwise keep serving the old store. Replacing it loses
    nothing, since every index is derived from its store.
    """
    import ray

    actor = make()
    if ray.get(actor.config.remote()) != wanted:
        ray.kill(actor, no_restart=True)
        actor = make()
    return actor


def index_actor(
    app_name: str,
    feature: str,
    kind: str,
    data_dir: str,
    dim: int,
    options: dict[str, Any] | None = None,
    snapshot_interval_s: float = 30.0,
    num_cpus: float = 0.0,
    shard: tuple[int, int] = (0, 1),
) -> Any:
    """Get or create the index actor of one feature (``shard``: i of N) of an app."""
    import ray

    path = str(shards.directory(data_dir, feature, *shard))
    options = options or {}
    wanted = {"kind": kind, "path": path, "dim": dim, "options": KINDS[kind].fixed(options)}
    actor = _current(
        lambda: (
            ray.remote(IndexActor)
            .options(
                name=actor_name(app_name, shards.role(feature, *shard)),
                num_cpus=num_cpus,
                # Threads, so that searches and adds go on while adopt() fills a trained
                # index; the index's own lock keeps it a single writer.
                max_concurrency=8,
                **_ACTOR_OPTIONS,
            )
            .remote(kind, path, dim, options, snapshot_interval_s)
        ),
        wanted,
    )
    # A reused actor keeps its index; a changed live setting (nprobe, aqe) applies in place.
    ray.get(actor.configure.remote(KINDS[kind].live(options)))
    return actor


def catalog_actor(app_name: str, data_dir: str, num_cpus: float = 0.0) -> Any:
    """Get or create the catalog actor (id <-> file name) of an app, on this data_dir."""
    import ray

    path = Path(data_dir) / "catalog"
    return _current(
        lambda: (
            ray.remote(Catalog)
            .options(name=actor_name(app_name, "catalog"), num_cpus=num_cpus, **_ACTOR_OPTIONS)
            .remote(path)
        ),
        {"path": str(path)},
    )


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


class IndexClient:
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
    ):
        self.catalog = catalog
        #: How long a search waits for a shard (of several) before answering without it.
        self.timeout_s = timeout_s
        self.shards = {f: a if isinstance(a, list) else [a] for f, a in indexes.items()}
        #: Enabled features without an index, and why (a model whose width is unknown, an
        #: index that could not open); their routes answer 503 with the reason.
        self.missing = dict(missing)

    @property
    def features(self) -> list[str]:
        """The features with an open index, in config order."""
        return list(self.shards)

    def owner(self, feature: str, image_id: int) -> Any:
        """The index actor of the shard that owns an image's feature."""
        actors = self.shards[feature]
        return actors[shards.owner(image_id, len(actors))]

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
    ) -> IndexClient:
        """Get or create the app's actors with these settings (what ``graph.py`` does)."""
        from ray.exceptions import RayError

        missing: dict[str, str] = {}
        indexes: dict[str, list[Any]] = {}
        for name, spec in specs.items():
            if isinstance(spec.dim, str):
                missing[name] = spec.dim
                continue
            if others := shards.other_layouts(data_dir, name, spec.shards):
                missing[name] = (
                    f"index unavailable: {data_dir}/{name} holds images in "
                    f"{', '.join(f'{n} shard(s) ({c} images)' for n, c in others.items())}, "
                    f"not in the {spec.shards} this config asks for: stop the app and run "
                    "scripts/reshard.py, or set shards back"
                )
                continue
            try:
                indexes[name] = [
                    index_actor(
                        app_name,
                        name,
                        spec.kind,
                        data_dir,
                        spec.dim,
                        spec.options,
                        snapshot_interval_s,
                        num_cpus,
                        (i, spec.shards),
                    )
                    for i in range(spec.shards)
                ]
            except RayError as exc:  # a store of another model's features, say
                log.error("index of %s unavailable: %s", name, exc)
                missing[name] = f"index unavailable: {reason(exc)}"
        return cls(catalog_actor(app_name, data_dir), indexes, missing, timeout_s)

    @classmethod
    def connect(cls, app_name: str, specs: Mapping[str, IndexSpec]) -> IndexClient:
        """The running app's actors (scripts); ``ValueError`` naming what is not running."""
        import ray

        def get(role: str) -> Any:
            try:
                return ray.get_actor(actor_name(app_name, role), namespace="serve")
            except ValueError:
                raise ValueError(
                    f"no actor {actor_name(app_name, role)!r}: is the app running (make serve)?"
                ) from None

        indexes = {
            f: [get(shards.role(f, i, spec.shards)) for i in range(spec.shards)]
            for f, spec in specs.items()
        }
        return cls(get("catalog"), indexes, {})

    @classmethod
    def local(
        cls, data_dir: str | Path, specs: Mapping[str, IndexSpec], snapshot_interval_s: float = 3600
    ) -> IndexClient:
        """The same indexes hosted in this process, without Ray (unit tests, tools)."""
        indexes = {
            name: [
                LocalActor(
                    IndexActor(
                        spec.kind,
                        str(shards.directory(data_dir, name, i, spec.shards)),
                        spec.dim,
                        spec.options,
                        snapshot_interval_s,
                    )
                )
                for i in range(spec.shards)
            ]
            for name, spec in specs.items()
            if isinstance(spec.dim, int)
        }
        missing = {n: s.dim for n, s in specs.items() if isinstance(s.dim, str)}
        return cls(LocalActor(Catalog(Path(data_dir) / "catalog")), indexes, missing)

    def subset(self, features: Iterable[str]) -> IndexClient:
        """The same actors, only these features' indexes."""
        chosen = {f: self.shards[f] for f in features}
        return IndexClient(self.catalog, chosen, self.missing, self.timeout_s)

    # --- reading ------------------------------------------------------------------------
    async def names(self, ids: list[int]) -> dict[int, str]:
        """File names of the known ids among ``ids``."""
        return await self.catalog.name_of.remote(ids) if ids else {}

    async def id_of(self, file_name: str) -> int | None:
        """The id of a file name, or None."""
        return await self.catalog.id_of.remote(file_name)

    async def ids_of(self, file_names: list[str]) -> list[int | None]:
        """Ids of file names (None where unknown)."""
        return await self.catalog.ids_of.remote(file_names)

    async def has(self, feature: str, ids: list[int]) -> list[int]:
        """The ids among ``ids`` stored in one feature's index (each asked of its shard)."""
        actors = self.shards[feature]
        groups = shards.by_owner(ids, len(actors))
        found = await asyncio.gather(
            *(actors[s].has.remote([ids[j] for j in rows]) for s, rows in groups.items())
        )
        return sorted(i for present in found for i in present)

    async def features_of(self, image_id: int) -> list[str]:
        """The features stored for an image, in index order."""
        present = await asyncio.gather(
            *(self.owner(f, image_id).has.remote([image_id]) for f in self.shards)
        )
        return [n for n, has in zip(self.shards, present, strict=True) if has]

    async def stored_everywhere(self, ids: list[int], features: Iterable[str]) -> set[int]:
        """The ids among ``ids`` stored in every one of ``features``' indexes."""
        stored = set(ids)
        if ids:
            for present in await asyncio.gather(*(self.has(f, ids) for f in features)):
                stored &= set(present)
        return stored

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
        if len(actors) == 1:
            return await actors[0].search.remote(query, k, threshold, exclude, **options)
        found = await asyncio.gather(
            *(
                asyncio.wait_for(
                    a.search.remote(query, k, threshold, exclude, **options), self.timeout_s
                )
                for a in actors
            ),
            return_exceptions=True,
        )
        good = [hits for hits in found if not isinstance(hits, BaseException)]
        missing = [
            shards.role(feature, i, len(actors))
            for i, hits in enumerate(found)
            if isinstance(hits, BaseException)
        ]
        if not good:
            why = "; ".join(
                f"{m}: {reason(e) or type(e).__name__}" for m, e in zip(missing, found, strict=True)
            )
            raise BackendDown(f"no shard of {feature} answered, retry: {why}")
        if missing:
            log.warning("%s answered without %s", feature, missing)
        return Hits(shards.merge(good, k), missing)

    async def search_by_id(
        self, feature: str, image_id: int, k: int | None, threshold: float | None, **options: Any
    ) -> list[Hit]:
        """One feature's nearest stored images to a stored one; ``UnknownImage``. Sharded:
        the owner gives the stored query, every shard searches by it (query expansion then
        expands within each shard)."""
        if len(self.shards[feature]) == 1:
            return await self.owner(feature, image_id).search_by_id.remote(
                image_id, k, threshold, **options
            )
        query = await asyncio.wait_for(
            self.owner(feature, image_id).query_of.remote(image_id), self.timeout_s
        )
        if query is None:  # nothing to match by (a text without words)
            return []
        return await self.search(feature, query, k, threshold, image_id, **options)

    async def docs(self, features: Sequence[str], image_id: int) -> list[dict[str, Any]]:
        """An image's stored text documents, one per text feature (empty where none)."""
        found = await asyncio.gather(
            *(self.owner(f, image_id).docs.remote([image_id]) for f in features)
        )
        return [got.get(image_id, {}) for got in found]

    async def describe(self) -> tuple[dict[str, Any], int | BaseException]:
        """Each index's description (or the error of one that failed; sharded: the counts
        summed and each shard's own), and the image count."""
        actors = [(f, a) for f, shard_list in self.shards.items() for a in shard_list]
        *described, images = await asyncio.gather(
            *(a.describe.remote() for _, a in actors),
            self.catalog.count.remote(),
            return_exceptions=True,
        )
        out: dict[str, Any] = {}
        for feature, actor_list in self.shards.items():
            mine, described = described[: len(actor_list)], described[len(actor_list) :]
            out[feature] = mine[0] if len(mine) == 1 else _combined(mine)
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
        return done[0] if len(done) == 1 else _combined(list(done))

    # --- writing ------------------------------------------------------------------------
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
        """
        existed = await self._existing(images, labels)
        registered = await self._register(images, labels)
        out = [
            Stored(None, name, existed=old, conflict=got)
            if isinstance(got, str)
            else Stored(got[0], got[1], existed=old)
            for (name, _), got, old in zip(images, registered, existed, strict=True)
        ]
        rows = [j for j, s in enumerate(out) if s.conflict is None]
        if not rows:
            return out
        ids = [i for j in rows if (i := out[j].image_id) is not None]
        written = list(features)
        # One call per feature and owning shard; each image's status is its own call's.
        calls: list[tuple[str, list[int], Any]] = []
        for f in written:
            column = take_rows(features[f], rows)
            calls += [
                (f, pos, a.add.remote([ids[p] for p in pos], take_rows(column, pos)))
                for a, pos in self._groups(f, ids)
            ]
        stale = [f for f in self.shards if f not in features] if replace else []
        old = [j for j, i in enumerate(ids) if out[rows[j]].existed]
        for f in stale if old else []:
            calls += [
                (f, [old[p] for p in pos], a.remove.remote([ids[old[p]] for p in pos]))
                for a, pos in self._groups(f, [ids[j] for j in old])
            ]
        results = await asyncio.gather(*(c for _, _, c in calls), return_exceptions=True)
        for (f, positions, _), result in zip(calls, results, strict=True):
            state = "ok" if not isinstance(result, BaseException) else f"error: {reason(result)}"
            for p in positions:
                out[rows[p]].status[f] = state
        await self._withdraw(
            [out[j] for j in rows if not out[j].ok and not out[j].existed], written
        )
        return out

    async def _existing(
        self, images: list[tuple[str | None, int | None]], labels: bool
    ) -> list[bool]:
        ids = [i for _, i in images if i is not None]
        named = [n for n, i in images if i is None and n and not labels]
        known_ids = set(await self.names(ids)) if ids else set()
        known_names = dict(zip(named, await self.ids_of(named), strict=True)) if named else {}
        return [
            i in known_ids if i is not None else known_names.get(n) is not None  # type: ignore[arg-type]
            for n, i in images
        ]

    async def _register(
        self, images: list[tuple[str | None, int | None]], labels: bool
    ) -> list[tuple[int, str] | str]:
        """(id, name) per image, or why it could not be registered."""
        try:
            return list(await self.catalog.register_many.remote(images, labels))
        except ValueError as exc:
            if len(images) == 1:
                return [reason(exc)]
        # register_many is all or nothing: a conflict that arose meanwhile (an upload through
        # the API during an ingest) must cost only its own image, not the batch.
        out: list[tuple[int, str] | str] = []
        for name, image_id in images:
            try:
                out.append(await self.catalog.register.remote(name, image_id, labels))
            except ValueError as exc:
                out.append(reason(exc))
        return out

    async def _withdraw(self, failed: list[Stored], written: list[str]) -> None:
        """Take new images out after a failed write: their features, then their catalog
        entries. The features written fine must go; a failed one is tried too (its write may
        have committed before the error). Best effort: an image whose written feature cannot
        be removed now stays registered, and is logged."""
        ids = [s.image_id for s in failed if s.image_id is not None]
        if not ids:
            return
        undo = [
            (f, pos, a.remove.remote([ids[p] for p in pos]))
            for f in written
            for a, pos in self._groups(f, ids)
        ]
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

    def _groups(self, feature: str, ids: list[int]) -> list[tuple[Any, list[int]]]:
        """(shard actor, positions in ``ids``) for each shard that owns some of ``ids``."""
        actors = self.shards[feature]
        return [(actors[s], pos) for s, pos in shards.by_owner(ids, len(actors)).items()]

    async def delete(self, image_id: int, features: Sequence[str] | None = None) -> None:
        """Remove an image's features (all by default, then the image itself)."""
        targets = list(features) if features is not None else self.features
        await asyncio.gather(*(self.owner(f, image_id).remove.remote([image_id]) for f in targets))
        if features is None:
            await self.catalog.unregister.remote(image_id)


def take_rows(column: Any, rows: list[int]) -> Any:
    """The rows of a feature column for the registered images (a contiguous array where the
    column is one, a list of arrays for a ragged one)."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return np.ascontiguousarray(column[rows])
    return [column[j] for j in rows]


def _combined(described: list[Any]) -> dict[str, Any]:
    """One description of a sharded index: shard 0's settings, the counts summed, and each
    shard's own description (or its error)."""
    parts = [d if not isinstance(d, BaseException) else {"error": reason(d)} for d in described]
    good = [d for d in parts if "error" not in d]
    out: dict[str, Any] = dict(good[0]) if good else {}
    if len(good) == len(parts):
        out["count"] = sum(d.get("count", 0) for d in parts)
    else:
        out.pop("count", None)
        out["error"] = "; ".join(
            f"shard {i}/{len(parts)}: {d['error']}" for i, d in enumerate(parts) if "error" in d
        )
    return {**out, "shards": parts}
