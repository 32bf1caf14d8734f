"""The index actor: hosts one feature's index, its single writer (Ray-free class; the index
client makes it a named, detached, restartable Ray actor)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from index_actors.interface import Hit, Index
from index_actors.kinds import KINDS
from index_actors.shards import retire

#: Files next to a store that a reshard carries to the new shards.
CARRIED = ("trained.npz", "live.json")

log = logging.getLogger(__name__)


class IndexActor:
    """Hosts one ``Index``: the single writer of its store and its FAISS index.

    A daemon thread snapshots the index when it changed, so a restart usually loads instead
    of rebuilding; the snapshot is an optimisation, the store is what makes adds durable.
    """

    def __init__(
        self,
        kind: str,
        path: str,
        dim: int,
        options: dict[str, Any],
        snapshot_interval_s: float,
        carry: dict[str, bytes] | None = None,
        node: str | None = None,
    ) -> None:
        # A new shard of a reshard starts from its old layout's trained index and live
        # settings (``carried``), whatever an earlier attempt left.
        if carry is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            for name in CARRIED:
                if name in carry:
                    (Path(path) / name).write_bytes(carry[name])
                else:
                    (Path(path) / name).unlink(missing_ok=True)
        self.index: Index = KINDS[kind].open(Path(path), dim, **options)
        self.kind = KINDS[kind]
        self._closed = False
        self.settings = self.settings_of(kind, path, dim, options, node)
        self._interval = snapshot_interval_s
        threading.Thread(target=self._snapshot_loop, daemon=True).start()

    @staticmethod
    def settings_of(
        kind: str, path: str, dim: int, options: dict[str, Any], node: str | None = None
    ) -> dict[str, Any]:
        """What an actor is made with, live settings aside: another value needs a new one.
        ``node``: the node it was placed on (``placement.Layout``), so that one placed
        elsewhere (before a layout was recorded, say) is not taken for it."""
        fixed = KINDS[kind].fixed(options)
        return {"kind": kind, "path": path, "dim": dim, "options": fixed, "node": node}

    def _snapshot_loop(self) -> None:
        while True:
            time.sleep(self._interval)
            if self._closed:
                return
            try:
                self.index.snapshot()
            except Exception:  # a full disk must not stop later snapshots
                log.exception("snapshot of %s failed", self.settings["path"])

    def __ray_shutdown__(self) -> None:
        """Ray calls this on a graceful actor exit: a last snapshot saves a rebuild."""
        self.close()

    def close(self) -> None:
        """Snapshot and close the index (once)."""
        if not self._closed:
            self._closed = True
            self.index.close()

    def config(self) -> dict[str, Any]:
        """What this actor was created with (a reused detached actor may predate a change)."""
        return self.settings

    def add(self, ids: list[int], features: Any) -> int:
        """See ``Index.add``."""
        return self.index.add(ids, features)

    def remove(self, ids: list[int]) -> list[int]:
        """See ``Index.remove``."""
        return self.index.remove(ids)

    def has(self, ids: list[int]) -> list[int]:
        """See ``Index.has``."""
        return self.index.has(ids)

    def docs(self, ids: list[int]) -> dict[int, Any]:
        """Stored text documents (tags, caption, OCR text) of a text feature's index."""
        return self.index.docs(ids)

    def search(
        self,
        queries: Any,
        k: int | None,
        threshold: float | None = None,
        exclude: int | None = None,
        **extra: Any,
    ) -> list[Hit]:
        """See ``Index.search``; ``extra``: per-search options of the kind (aqe_n)."""
        return self.index.search(queries, k=k, threshold=threshold, exclude=exclude, **extra)

    def search_by_id(
        self, image_id: int, k: int | None, threshold: float | None = None, **extra: Any
    ) -> list[Hit]:
        """See ``Index.search_by_id``; raises ``UnknownImage``."""
        return self.index.search_by_id(image_id, k=k, threshold=threshold, **extra)

    def expansion(self, queries: Any, aqe_n: int | None, aqe_alpha: float | None) -> Any:
        """Vector kinds: step 1 of a query expansion over shards (``VectorIndex``)."""
        return self.index.expansion(queries, aqe_n, aqe_alpha)  # type: ignore[attr-defined]

    def expansion_terms(self, rows: Any, near: list[list[int]], alpha: float) -> Any:
        """Vector kinds: step 2, this shard's part of the expansion."""
        return self.index.expansion_terms(rows, near, alpha)  # type: ignore[attr-defined]

    def search_prepared(
        self, rows: Any, k: int | None, threshold: float | None, exclude: int | None
    ) -> list[Hit]:
        """Vector kinds: step 3, the search by the expanded rows."""
        return self.index.search_prepared(rows, k, threshold, exclude)  # type: ignore[attr-defined]

    def query_of(self, image_id: int) -> Any:
        """See ``Index.query_of``."""
        return self.index.query_of(image_id)

    def configure(self, live: dict[str, Any]) -> None:
        """Apply live settings (the index kind's ``LIVE``: nprobe, rerank, aqe_n, ...)."""
        if live:
            self.index.configure(**live)

    def sample(self, n: int, seed: int = 0) -> Any:
        """Up to ``n`` stored vectors (or descriptors) at random (``scripts/train_index.py``)."""
        return self.index.sample(n, seed)

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Switch to a trained index / whitening; searches and adds go on meanwhile."""
        return self.index.adopt(trained, whitening)

    def describe(self) -> dict[str, Any]:
        """Count, whether a trained index (and whitening) is in use, the live settings."""
        return self.index.describe()

    def count(self) -> int:
        """Number of indexed features."""
        return self.index.count

    def snapshot(self) -> bool:
        """Snapshot now (tests and graceful shutdown)."""
        return self.index.snapshot()

    def export(self, after: int, n: int) -> tuple[list[int], Any]:
        """Up to ``n`` stored (ids, features) with ids over ``after``, features as ``add``
        takes them (a reshard copies a shard page by page)."""
        ids, raws = self.index.store.page(after, n)  # type: ignore[attr-defined]
        rows = [self.kind.stored_feature(raw) for raw in raws]
        if rows and all(r.shape == rows[0].shape for r in rows):
            return ids, np.stack(rows)  # one buffer: thousands of small arrays pickle slowly
        return ids, rows

    def generation(self) -> int:
        """The store's count of committed writes (a cache of derived answers checks it)."""
        return int(self.index.store.generation)  # type: ignore[attr-defined]

    def clear(self) -> int:
        """Remove every stored image (a reshard's new shard, before its copy); returns how
        many there were."""
        removed, after = 0, -1
        while ids := self.index.store.page(after, 10_000)[0]:  # type: ignore[attr-defined]
            removed += len(self.index.remove(ids))
            after = ids[-1]
        return removed

    def carried(self) -> dict[str, bytes]:
        """The files a new layout's shards start from: the trained index, live settings."""
        folder = Path(self.settings["path"])
        return {n: (folder / n).read_bytes() for n in CARRIED if (folder / n).exists()}

    def retire(self, data_dir: str, feature: str, shard: int, shards: int, stamp: str) -> str:
        """Close the index and move this shard's files aside (its layout was resharded); the
        actor is then of no use and is killed. No last snapshot: the files are retired."""
        self._closed = True
        self.index.store.close()  # type: ignore[attr-defined]
        return str(retire(data_dir, feature, shard, shards, stamp))

    def pid(self) -> int:
        """Process id, for fault-injection tests."""
        return os.getpid()


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
