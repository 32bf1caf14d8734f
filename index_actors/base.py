"""The base of every FAISS-backed index kind: an LMDB store plus its derived index (Ray-free).

LMDB holds the truth; the FAISS index is derived from it, snapshotted to a file stamped with
the store's generation, and rebuilt whenever that stamp does not match on start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.interface import Hit, UnknownImage
from index_actors.store import FeatureStore

log = logging.getLogger(__name__)

#: FAISS metric of each metric name a feature may declare.
METRICS = {"l1": faiss.METRIC_L1, "l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoredIndex(ABC):
    """A feature store plus its FAISS index; the base of every index kind.

    All public methods hold one lock: the hosting actor serves calls one at a time, and its
    snapshot thread must not see a half-applied change.
    """

    dtype: np.dtype
    #: Settings that change without a rebuild (``configure``), kept in ``live.json``.
    LIVE: tuple[str, ...] = ()

    def __init__(self, path: str | Path, dim: int, rebuild_chunk: int = 65536) -> None:
        self.path = Path(path)
        self.dim = dim
        self.live: dict[str, Any] = {}
        self.rebuild_chunk = rebuild_chunk
        self.store = FeatureStore(self.path / "lmdb")
        self._lock = threading.RLock()
        self._snapshot_lock = threading.Lock()
        self._snapshot_generation = -1
        #: Ids written while a replacement index is being built (None: no build running).
        self._changed: set[int] | None = None
        self._check_stored_width()
        self.index = self._load_or_rebuild()

    # --- what each kind defines -------------------------------------------------------
    @property
    @abstractmethod
    def width(self) -> int:
        """Array columns of one feature (bytes for binary, floats for vectors)."""

    @abstractmethod
    def _new_index(self) -> Any:
        """An empty FAISS index with id mapping."""

    @abstractmethod
    def _read(self, path: str) -> Any: ...

    @abstractmethod
    def _serialize(self, index: Any) -> np.ndarray: ...

    def _distances(self, raw: np.ndarray) -> np.ndarray:
        """FAISS output -> distances where smaller is closer."""
        return raw.astype(np.float64)

    # --- loading and persistence ------------------------------------------------------
    @property
    def _stored_sizes(self) -> tuple[int, ...]:
        """Array columns a stored feature may have (binary: with a second bit string)."""
        return (self.width,)

    def _check_stored_width(self) -> None:
        """Refuse a store whose features have another width (the model was changed)."""
        first = next(self.store.items(), None)
        sizes = [w * self.dtype.itemsize for w in self._stored_sizes]
        if first is not None and len(first[1]) not in sizes:
            raise ValueError(
                f"{self.path} holds features of {len(first[1])} bytes, this index wants "
                f"{' or '.join(map(str, sizes))} (was the model changed?): use another "
                f"data_dir, or delete {self.path} and ingest again"
            )

    #: The trained artefacts' hash ("" for none), set by the kinds that have them.
    _tag = ""

    @property
    def _stamp_tag(self) -> str:
        """What besides the store's generation a snapshot must match (trained artefacts)."""
        return self._tag

    @property
    def _index_width(self) -> int:
        """The FAISS index's own ``d``."""
        return self.dim

    def _expected_total(self) -> int:
        """Entries the FAISS index must hold to match the store (one per image here)."""
        return self.store.count()

    @property
    def _snapshot_file(self) -> Path:
        return self.path / "index.faiss"

    @property
    def _stamp_file(self) -> Path:
        return self.path / "index.stamp"

    def _load_or_rebuild(self) -> Any:
        generation = self.store.generation
        try:
            number, _, tag = self._stamp_file.read_text().partition(" ")
            stamp = int(number)
        except (OSError, ValueError):
            stamp, tag = -1, ""
        if stamp == generation and tag == self._stamp_tag and self._snapshot_file.exists():
            try:
                index = self._read(str(self._snapshot_file))
            except RuntimeError as exc:  # a damaged snapshot is only a slower start
                log.warning("snapshot %s unreadable (%s); rebuilding", self._snapshot_file, exc)
            else:
                # A cheap guard against a snapshot file older than its stamp (a crash between
                # the two renames on a file system that reordered them).
                if index.ntotal == self._expected_total() and index.d == self._index_width:
                    self._snapshot_generation = generation
                    return index
        log.info(
            "rebuilding %s from LMDB (snapshot stamp %s, store %s)", self.path, stamp, generation
        )
        return self._rebuild()

    def _rebuild(self, index: Any = None, prepare: Any = None) -> Any:
        """Fill ``index`` (default: a new empty one) from LMDB, rows through ``prepare``."""
        index = self._new_index() if index is None else index
        prepare = prepare or self._indexable
        ids: list[int] = []
        rows: list[bytes] = []
        for image_id, value in self.store.items():
            ids.append(image_id)
            rows.append(value)
            if len(ids) >= self.rebuild_chunk:
                self._add_rows(index, ids, rows, prepare)
                ids, rows = [], []
        if ids:
            self._add_rows(index, ids, rows, prepare)
        return index

    def _add_rows(self, index: Any, ids: list[int], rows: list[bytes], prepare: Any) -> None:
        # The indexed part of each value (binary values may carry a second bit string).
        size = self.width * self.dtype.itemsize
        arr = np.frombuffer(b"".join(r[:size] for r in rows), dtype=self.dtype)
        arr = arr.reshape(len(rows), self.width)
        index.add_with_ids(prepare(arr), np.asarray(ids, dtype=np.int64))

    def _indexable(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows -> what the FAISS index holds (vectors: after any whitening)."""
        return rows

    def snapshot(self) -> bool:
        """Write the FAISS index to disk if it changed since the last snapshot."""
        with self._snapshot_lock:
            with self._lock:
                generation = self.store.generation
                if generation == self._snapshot_generation:
                    return False
                # An in-memory copy under the lock, the slow disk write outside it: searches
                # and adds wait for a memcpy, not for gigabytes going to disk.
                blob = self._serialize(self.index)
                tag = self._stamp_tag
            tmp = self._snapshot_file.with_suffix(".tmp")
            blob.tofile(tmp)
            _fsync(tmp)
            os.replace(tmp, self._snapshot_file)
            # The stamp goes last: a crash before it leaves an old stamp, hence a rebuild.
            stamp_tmp = self._stamp_file.with_suffix(".tmp")
            stamp_tmp.write_text(f"{generation} {tag}".rstrip())
            _fsync(stamp_tmp)
            os.replace(stamp_tmp, self._stamp_file)
            _fsync(self.path)
            self._snapshot_generation = generation
            return True

    def close(self) -> None:
        """Snapshot and close the store."""
        self.snapshot()
        with self._lock:
            self.store.close()

    # --- live settings and what only some kinds do ----------------------------------------
    def configure(self, **live: Any) -> None:
        """Change live settings (the kind's ``LIVE``: ``nprobe``, ...) without a rebuild."""
        unknown = set(live) - set(self.LIVE)
        if unknown:
            raise ValueError(f"not live settings: {sorted(unknown)}; live: {self.LIVE}")
        with self._lock:
            changed = {k: v for k, v in live.items() if self.live.get(k) != v}
            self.live.update(live)
            if "nprobe" in live and faiss.try_extract_index_ivf(self.index) is not None:
                faiss.ParameterSpace().set_index_parameter(
                    self.index, "nprobe", int(live["nprobe"])
                )
            if changed:
                # Kept for a restart after a crash: Ray re-creates the actor with the
                # options it was first made with, not the ones configured since.
                tmp = self.path / "live.json.tmp"
                tmp.write_text(json.dumps(self.live))
                os.replace(tmp, self.path / "live.json")

    def _start_live(self, defaults: dict[str, Any]) -> None:
        """Apply ``defaults`` overridden by the settings kept in ``live.json``."""
        try:
            saved = json.loads((self.path / "live.json").read_text())
        except (OSError, ValueError):
            saved = {}
        self.configure(**{**defaults, **{k: v for k, v in saved.items() if k in self.LIVE}})

    def sample(self, n: int, seed: int = 0) -> Any:
        """Training data (trainable kinds override this)."""
        raise ValueError(f"{self.path} takes no trained index")

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Switch to a trained index (trainable kinds override this)."""
        raise ValueError(f"{self.path} takes no trained index")

    def describe(self) -> dict[str, Any]:
        """Count and live settings; trainable kinds add whether a trained index is in use."""
        return {"count": self.count, **self.live}

    def docs(self, ids: list[int]) -> dict[int, Any]:
        """Only the text kind stores documents."""
        raise ValueError(f"{self.path} holds no text documents")

    # --- the index API ----------------------------------------------------------------
    def _as_rows(self, features: Any) -> np.ndarray:
        arr = np.ascontiguousarray(features, dtype=self.dtype)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.width:
            raise ValueError(f"expected features of width {self.width}, got shape {arr.shape}")
        return arr

    def add(self, ids: list[int], features: Any) -> int:
        """Store and index features; re-adding an id replaces it. Returns the count added.

        The LMDB commit comes first: once it returned the add survives any crash.
        """
        arr = self._as_rows(features)
        if len(ids) != len(arr):
            raise ValueError(f"{len(ids)} ids for {len(arr)} features")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        with self._lock:
            replaced = self.store.put(zip(ids, (row.tobytes() for row in arr), strict=True))
            if replaced:
                self.index.remove_ids(np.asarray(replaced, dtype=np.int64))
            self.index.add_with_ids(self._indexable(arr), np.asarray(ids, dtype=np.int64))
            if self._changed is not None:  # an adopt() is filling a new index
                self._changed.update(ids)
        return len(ids)

    def remove(self, ids: list[int]) -> list[int]:
        """Delete features; returns the ids that were stored."""
        with self._lock:
            removed = self.store.delete(ids)
            if removed:
                self.index.remove_ids(np.asarray(removed, dtype=np.int64))
            if self._changed is not None:
                self._changed.update(removed)
            return removed

    def get(self, image_id: int) -> np.ndarray:
        """The stored feature of ``image_id``; raises ``UnknownImage``."""
        raw = self.store.get(image_id)
        if raw is None:
            raise UnknownImage(image_id)
        return np.frombuffer(raw, dtype=self.dtype).copy()

    def has(self, ids: list[int]) -> list[int]:
        """The subset of ``ids`` that is stored."""
        return self.store.present(ids)

    @property
    def count(self) -> int:
        """Number of indexed features."""
        return int(self.index.ntotal)

    def search(
        self,
        queries: Any,
        k: int | None = 20,
        threshold: float | None = None,
        exclude: int | None = None,
    ) -> list[Hit]:
        """Nearest stored ids to a query given as one or more variants (rows).

        Each id keeps its best distance over the variants. With ``threshold`` only ids at a
        distance <= threshold are returned (all of them, or the ``k`` closest when k is set);
        otherwise the ``k`` nearest. ``exclude`` drops one id (the query image itself).
        """
        rows = self._as_rows(queries)
        with self._lock:
            return self._search_prepared(self._indexable(rows), k, threshold, exclude)

    def _search_prepared(
        self, rows: np.ndarray, k: int | None, threshold: float | None, exclude: int | None
    ) -> list[Hit]:
        """``search`` on rows already in the index's space."""
        if k is None and threshold is None:
            raise ValueError("give k, threshold or both")
        best: dict[int, float] = {}
        with self._lock:
            if self.index.ntotal == 0:
                return []
            if threshold is not None:
                pairs = self._within(rows, threshold)
            else:
                assert k is not None
                pairs = self._nearest(rows, min(k + (exclude is not None), self.index.ntotal))
        for label, dist in pairs:
            if dist < best.get(label, float("inf")):
                best[label] = dist
        best.pop(exclude, None)  # type: ignore[arg-type]
        hits = sorted(best.items(), key=lambda h: (h[1], h[0]))
        return hits[:k] if k is not None else hits

    def _nearest(self, rows: np.ndarray, want: int) -> list[Hit]:
        """(id, distance) of the ``want`` nearest per (prepared) query row."""
        raw, labels = self.index.search(rows, want)
        dists = self._distances(raw)
        return [
            (int(label), float(d))
            for q in range(len(rows))
            for label, d in zip(labels[q], dists[q], strict=True)
            if label >= 0
        ]

    def _within(self, rows: np.ndarray, threshold: float) -> list[Hit]:
        """(id, distance) of everything at distance <= threshold of a (prepared) query row."""
        lims, raw, labels = self._range(rows, threshold)
        dists = self._distances(raw)
        # The range is a little loose (FAISS's bound is strict); exact here.
        return [
            (int(labels[j]), float(dists[j]))
            for q in range(len(rows))
            for j in range(lims[q], lims[q + 1])
            if dists[j] <= threshold
        ]

    def _range(
        self, rows: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.index.range_search(rows, threshold)

    def search_by_id(
        self, image_id: int, k: int | None = 20, threshold: float | None = None
    ) -> list[Hit]:
        """Nearest stored ids to a stored image, the image itself left out."""
        return self.search(self.query_of(image_id), k=k, threshold=threshold, exclude=image_id)

    def query_of(self, image_id: int) -> np.ndarray:
        """Query variants for a stored image (subclasses may add variants)."""
        return self.get(image_id)[None, :]
