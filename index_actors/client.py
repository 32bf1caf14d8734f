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

from index_actors.actor import IndexActor
from index_actors.interface import Hit, reason
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
) -> Any:
    """Get or create the index actor of one feature of an app, with these settings."""
    import ray

    path = str(Path(data_dir) / feature)
    options = options or {}
    wanted = {"kind": kind, "path": path, "dim": dim, "options": KINDS[kind].fixed(options)}
    actor = _current(
        lambda: (
            ray.remote(IndexActor)
            .options(
                name=actor_name(app_name, f"index:{feature}"),
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


class LocalActor:
    """A plain object with a Ray actor's calling shape: ``obj.method.remote(...)`` runs the
    method in a worker thread and gives an awaitable (tests, single-process tools)."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._obj, name)

        class _Remote:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Any:
                return asyncio.ensure_future(asyncio.to_thread(method, *args, **kwargs))

        return _Remote()


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
    """An app's catalog and index actors (handles), and what is done with them."""

    def __init__(self, catalog: Any, indexes: Mapping[str, Any], missing: Mapping[str, str]):
        self.catalog = catalog
        self.indexes = dict(indexes)
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
    ) -> IndexClient:
        """Get or create the app's actors with these settings (what ``graph.py`` does)."""
        from ray.exceptions import RayError

        missing: dict[str, str] = {}
        indexes: dict[str, Any] = {}
        for name, spec in specs.items():
            if isinstance(spec.dim, str):
                missing[name] = spec.dim
                continue
            try:
                indexes[name] = index_actor(
                    app_name,
                    name,
                    spec.kind,
                    data_dir,
                    spec.dim,
                    spec.options,
                    snapshot_interval_s,
                    num_cpus,
                )
            except RayError as exc:  # a store of another model's features, say
                log.error("index of %s unavailable: %s", name, exc)
                missing[name] = f"index unavailable: {reason(exc)}"
        return cls(catalog_actor(app_name, data_dir), indexes, missing)

    @classmethod
    def connect(cls, app_name: str, features: Iterable[str]) -> IndexClient:
        """The running app's actors (scripts); ``ValueError`` naming what is not running."""
        import ray

        def get(role: str) -> Any:
            try:
                return ray.get_actor(actor_name(app_name, role), namespace="serve")
            except ValueError:
                raise ValueError(
                    f"no actor {actor_name(app_name, role)!r}: is the app running (make serve)?"
                ) from None

        return cls(get("catalog"), {f: get(f"index:{f}") for f in features}, {})

    @classmethod
    def local(
        cls, data_dir: str | Path, specs: Mapping[str, IndexSpec], snapshot_interval_s: float = 3600
    ) -> IndexClient:
        """The same indexes hosted in this process, without Ray (unit tests, tools)."""
        root = Path(data_dir)
        indexes = {
            name: LocalActor(
                IndexActor(spec.kind, str(root / name), spec.dim, spec.options, snapshot_interval_s)
            )
            for name, spec in specs.items()
            if isinstance(spec.dim, int)
        }
        missing = {n: s.dim for n, s in specs.items() if isinstance(s.dim, str)}
        return cls(LocalActor(Catalog(root / "catalog")), indexes, missing)

    def subset(self, features: Iterable[str]) -> IndexClient:
        """The same actors, only these features' indexes."""
        return IndexClient(self.catalog, {f: self.indexes[f] for f in features}, self.missing)

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
        """The ids among ``ids`` stored in one feature's index."""
        return await self.indexes[feature].has.remote(ids)

    async def features_of(self, image_id: int) -> list[str]:
        """The features stored for an image, in index order."""
        present = await asyncio.gather(*(a.has.remote([image_id]) for a in self.indexes.values()))
        return [n for n, has in zip(self.indexes, present, strict=True) if has]

    async def stored_everywhere(self, ids: list[int], features: Iterable[str]) -> set[int]:
        """The ids among ``ids`` stored in every one of ``features``' indexes."""
        stored = set(ids)
        if ids:
            found = await asyncio.gather(*(self.indexes[f].has.remote(ids) for f in features))
            for present in found:
                stored &= set(present)
        return stored

    async def search(
        self,
        feature: str,
        query: Any,
        k: int | None,
        threshold: float | None = None,
        **options: Any,
    ) -> list[Hit]:
        """One feature's nearest stored images to a query feature (or a text)."""
        return await self.indexes[feature].search.remote(query, k, threshold, **options)

    async def search_by_id(
        self, feature: str, image_id: int, k: int | None, threshold: float | None, **options: Any
    ) -> list[Hit]:
        """One feature's nearest stored images to a stored one; ``UnknownImage``."""
        return await self.indexes[feature].search_by_id.remote(image_id, k, threshold, **options)

    async def docs(self, features: Sequence[str], image_id: int) -> list[dict[str, Any]]:
        """An image's stored text documents, one per text feature (empty where none)."""
        found = await asyncio.gather(*(self.indexes[f].docs.remote([image_id]) for f in features))
        return [got.get(image_id, {}) for got in found]

    async def describe(self) -> tuple[dict[str, Any], int | BaseException]:
        """Each index's description (or the error of one that failed), and the image count."""
        *described, images = await asyncio.gather(
            *(a.describe.remote() for a in self.indexes.values()),
            self.catalog.count.remote(),
            return_exceptions=True,
        )
        return dict(zip(self.indexes, described, strict=True)), images

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
        ids = [out[j].image_id for j in rows]
        written = list(features)
        calls = [self.indexes[f].add.remote(ids, take_rows(features[f], rows)) for f in written]
        stale = [f for f in self.indexes if f not in features] if replace else []
        old_ids = [out[j].image_id for j in rows if out[j].existed]
        if stale and old_ids:
            calls += [self.indexes[f].remove.remote(old_ids) for f in stale]
        results = await asyncio.gather(*calls, return_exceptions=True)
        status = {
            f: "ok" if not isinstance(r, BaseException) else f"error: {reason(r)}"
            for f, r in zip(written, results, strict=False)
        }
        for j in rows:
            out[j].status = dict(status)
        if any(isinstance(r, BaseException) for r in results):
            new = [out[j].image_id for j in rows if not out[j].existed]
            await self._withdraw([i for i in new if i is not None], written, status)
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

    async def _withdraw(self, ids: list[int], written: list[str], status: dict[str, str]) -> None:
        """Take new images out after a failed write: their features, then their catalog
        entries. The features written fine must go; a failed one is tried too (its write may
        have committed before the error). Best effort: what stays is logged."""
        if not ids:
            return
        undo = await asyncio.gather(
            *(self.indexes[f].remove.remote(ids) for f in written), return_exceptions=True
        )
        left = [
            f
            for f, r in zip(written, undo, strict=True)
            if isinstance(r, BaseException) and status[f] == "ok"
        ]
        if left:
            log.error("images %s: features %s stay after a failed add", ids, left)
            return
        await asyncio.gather(*(self.catalog.unregister.remote(i) for i in ids))

    async def delete(self, image_id: int, features: Sequence[str] | None = None) -> None:
        """Remove an image's features (all by default, then the image itself)."""
        targets = list(features) if features is not None else list(self.indexes)
        await asyncio.gather(*(self.indexes[f].remove.remote([image_id]) for f in targets))
        if features is None:
            await self.catalog.unregister.remote(image_id)


def take_rows(column: Any, rows: list[int]) -> Any:
    """The rows of a feature column for the registered images (a contiguous array where the
    column is one, a list of arrays for a ragged one)."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return np.ascontiguousarray(column[rows])
    return [column[j] for j in rows]
