"""The Ray actors that host the index and catalog classes: named, detached, restartable."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import ray

from index_actors.indexes import Hit, StoredIndex, VectorIndex, build_index
from index_actors.keypoints import KeypointIndex
from index_actors.store import Catalog
from index_actors.text import Doc, TextFeatureIndex

#: The index kinds that ``scripts/train_index.py`` can switch to a trained index.
Trainable = VectorIndex | KeypointIndex

log = logging.getLogger(__name__)


class IndexActor:
    """Hosts one ``StoredIndex``: the single writer of its LMDB store and FAISS index.

    A daemon thread snapshots the FAISS index when it changed, so a restart usually loads
    instead of rebuilding; the snapshot is an optimisation, LMDB is what makes adds durable.
    """

    def __init__(
        self, kind: str, path: str, dim: int, options: dict[str, Any], snapshot_interval_s: float
    ) -> None:
        self.index: StoredIndex | TextFeatureIndex = build_index(kind, Path(path), dim, **options)
        self.settings = {"kind": kind, "path": path, "dim": dim, "options": fixed(options)}
        self._interval = snapshot_interval_s
        threading.Thread(target=self._snapshot_loop, daemon=True).start()

    def _snapshot_loop(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.index.snapshot()
            except Exception:  # a full disk must not stop later snapshots
                log.exception("snapshot of %s failed", self.settings["path"])

    def __ray_shutdown__(self) -> None:
        """Ray calls this on a graceful actor exit: a last snapshot saves a rebuild."""
        self.index.close()

    def config(self) -> dict[str, Any]:
        """What this actor was created with (a reused detached actor may predate a change)."""
        return self.settings

    def add(self, ids: list[int], features: Any) -> int:
        """See ``StoredIndex.add``."""
        return self.index.add(ids, features)

    def remove(self, ids: list[int]) -> list[int]:
        """See ``StoredIndex.remove``."""
        return self.index.remove(ids)

    def has(self, ids: list[int]) -> list[int]:
        """See ``StoredIndex.has``."""
        return self.index.has(ids)

    def docs(self, ids: list[int]) -> dict[int, Doc]:
        """Stored text documents (tags, caption, OCR text) of a text feature's index."""
        if not isinstance(self.index, TextFeatureIndex):
            raise ValueError(f"{self.settings['path']} holds no text documents")
        return self.index.docs(ids)

    def search(
        self,
        queries: Any,
        k: int | None,
        threshold: float | None = None,
        exclude: int | None = None,
        **extra: Any,
    ) -> list[Hit]:
        """See ``StoredIndex.search``; ``extra``: per-search options of the kind (aqe_n)."""
        return self.index.search(queries, k=k, threshold=threshold, exclude=exclude, **extra)

    def search_by_id(
        self, image_id: int, k: int | None, threshold: float | None = None, **extra: Any
    ) -> list[Hit]:
        """See ``StoredIndex.search_by_id``; raises ``UnknownImage``."""
        return self.index.search_by_id(image_id, k=k, threshold=threshold, **extra)

    def configure(self, live: dict[str, Any]) -> None:
        """Apply live settings (the index kind's ``LIVE``: nprobe, rerank, aqe_n, ...)."""
        if live:
            self.index.configure(**live)

    def sample(self, n: int, seed: int = 0) -> Any:
        """Up to ``n`` stored vectors (or descriptors) at random (``scripts/train_index.py``)."""
        return self._trainable().sample(n, seed)

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Switch to a trained index / whitening; searches and adds go on meanwhile."""
        return self._trainable().adopt(trained, whitening)

    def describe(self) -> dict[str, Any]:
        """Count, whether a trained index (and whitening) is in use, the live settings."""
        out: dict[str, Any] = {"count": self.index.count, **self.index.live}
        if isinstance(self.index, Trainable):
            out["trained"] = self.index.trained
        if isinstance(self.index, VectorIndex):
            out["whitened"] = self.index.whitening is not None
        return out

    def _trainable(self) -> Trainable:
        if not isinstance(self.index, Trainable):
            raise ValueError(f"{self.settings['path']} takes no trained index")
        return self.index

    def count(self) -> int:
        """Number of indexed features."""
        return self.index.count

    def snapshot(self) -> bool:
        """Snapshot now (tests and graceful shutdown)."""
        return self.index.snapshot()

    def pid(self) -> int:
        """Process id, for fault-injection tests."""
        import os

        return os.getpid()


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


#: Every kind's live settings (``StoredIndex.LIVE``): changed in place, not by a new actor.
LIVE = frozenset(VectorIndex.LIVE) | frozenset(KeypointIndex.LIVE)


def fixed(options: dict[str, Any]) -> dict[str, Any]:
    """Index options that need a new actor when they change: all but the live settings."""
    return {k: v for k, v in options.items() if k not in LIVE}


def _current(make: Any, wanted: dict[str, Any]) -> Any:
    """The named actor ``make()`` gets or creates, replaced if it was made with other settings.

    Detached actors outlive the app: after a config change (another data_dir, metric or
    index option) the old one would otherwise keep serving the old store. Replacing it loses
    nothing, since every index is derived from its LMDB store.
    """
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
    path = str(Path(data_dir) / feature)
    options = options or {}
    wanted = {"kind": kind, "path": path, "dim": dim, "options": fixed(options)}
    actor = _current(
        lambda: (
            ray.remote(IndexActor)
            .options(
                name=f"{app_name}:index:{feature}",
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
    ray.get(actor.configure.remote({k: v for k, v in options.items() if k in LIVE}))
    return actor


def catalog_actor(app_name: str, data_dir: str, num_cpus: float = 0.0) -> Any:
    """Get or create the catalog actor (id <-> file name) of an app, on this data_dir."""
    path = Path(data_dir) / "catalog"
    return _current(
        lambda: (
            ray.remote(Catalog)
            .options(name=f"{app_name}:catalog", num_cpus=num_cpus, **_ACTOR_OPTIONS)
            .remote(path)
        ),
        {"path": str(path)},
    )
