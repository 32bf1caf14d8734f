"""FAISS indexes over the LMDB feature stores, one class per feature kind (Ray-free).

LMDB holds the truth; the FAISS index is derived from it, snapshotted to a file stamped with
the store's generation, and rebuilt whenever that stamp does not match on start.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.store import FeatureStore

log = logging.getLogger(__name__)

Hit = tuple[int, float]  # (image id, distance): smaller is closer for every metric


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UnknownImage(KeyError):
    """The image id has no stored feature of this kind."""


class StoredIndex(ABC):
    """A feature store plus its FAISS index; the base of every index kind.

    All public methods hold one lock: the hosting actor serves calls one at a time, and its
    snapshot thread must not see a half-applied change.
    """

    dtype: np.dtype

    def __init__(self, path: str | Path, dim: int, rebuild_chunk: int = 65536) -> None:
        self.path = Path(path)
        self.dim = dim
        self.rebuild_chunk = rebuild_chunk
        self.store = FeatureStore(self.path / "lmdb")
        self._lock = threading.RLock()
        self._snapshot_lock = threading.Lock()
        self._snapshot_generation = -1
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
    def _snapshot_file(self) -> Path:
        return self.path / "index.faiss"

    @property
    def _stamp_file(self) -> Path:
        return self.path / "index.stamp"

    def _load_or_rebuild(self) -> Any:
        generation = self.store.generation
        try:
            stamp = int(self._stamp_file.read_text())
        except (OSError, ValueError):
            stamp = -1
        if stamp == generation and self._snapshot_file.exists():
            try:
                index = self._read(str(self._snapshot_file))
            except RuntimeError as exc:  # a damaged snapshot is only a slower start
                log.warning("snapshot %s unreadable (%s); rebuilding", self._snapshot_file, exc)
            else:
                # A cheap guard against a snapshot file older than its stamp (a crash between
                # the two renames on a file system that reordered them).
                if index.ntotal == self.store.count():
                    self._snapshot_generation = generation
                    return index
        log.info(
            "rebuilding %s from LMDB (snapshot stamp %s, store %s)", self.path, stamp, generation
        )
        return self._rebuild()

    def _rebuild(self) -> Any:
        index = self._new_index()
        ids: list[int] = []
        rows: list[bytes] = []
        for image_id, value in self.store.items():
            ids.append(image_id)
            rows.append(value)
            if len(ids) >= self.rebuild_chunk:
                self._add_rows(index, ids, rows)
                ids, rows = [], []
        if ids:
            self._add_rows(index, ids, rows)
        return index

    def _add_rows(self, index: Any, ids: list[int], rows: list[bytes]) -> None:
        arr = np.frombuffer(b"".join(rows), dtype=self.dtype).reshape(len(rows), self.width)
        index.add_with_ids(arr, np.asarray(ids, dtype=np.int64))

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
            tmp = self._snapshot_file.with_suffix(".tmp")
            blob.tofile(tmp)
            _fsync(tmp)
            os.replace(tmp, self._snapshot_file)
            # The stamp goes last: a crash before it leaves an old stamp, hence a rebuild.
            stamp_tmp = self._stamp_file.with_suffix(".tmp")
            stamp_tmp.write_text(str(generation))
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
            self.index.add_with_ids(arr, np.asarray(ids, dtype=np.int64))
        return len(ids)

    def remove(self, ids: list[int]) -> list[int]:
        """Delete features; returns the ids that were stored."""
        with self._lock:
            removed = self.store.delete(ids)
            if removed:
                self.index.remove_ids(np.asarray(removed, dtype=np.int64))
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
        if k is None and threshold is None:
            raise ValueError("give k, threshold or both")
        best: dict[int, float] = {}
        with self._lock:
            if self.index.ntotal == 0:
                return []
            if threshold is not None:
                lims, raw, labels = self._range(rows, threshold)
                dists = self._distances(raw)
                for q in range(len(rows)):
                    for j in range(lims[q], lims[q + 1]):
                        # The range is a little loose (FAISS's bound is strict); exact here.
                        if dists[j] <= threshold:
                            self._keep(best, int(labels[j]), float(dists[j]))
            else:
                assert k is not None
                want = min(k + (exclude is not None), self.index.ntotal)
                raw, labels = self.index.search(rows, want)
                dists = self._distances(raw)
                for q in range(len(rows)):
                    for label, dist in zip(labels[q], dists[q], strict=True):
                        if label >= 0:
                            self._keep(best, int(label), float(dist))
        best.pop(exclude, None)  # type: ignore[arg-type]
        hits = sorted(best.items(), key=lambda h: (h[1], h[0]))
        return hits[:k] if k is not None else hits

    @staticmethod
    def _keep(best: dict[int, float], label: int, dist: float) -> None:
        if dist < best.get(label, float("inf")):
            best[label] = dist

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


class BinaryIndex(StoredIndex):
    """Hamming-distance index over packed bit strings (phash)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, dim: int, **kwargs: Any) -> None:
        if dim % 8:
            raise ValueError(f"binary features need a multiple of 8 bits, got {dim}")
        super().__init__(path, dim, **kwargs)

    @property
    def width(self) -> int:
        """Bytes per hash."""
        return self.dim // 8

    def _new_index(self) -> Any:
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim))

    def _read(self, path: str) -> Any:
        return faiss.read_index_binary(path)

    def _serialize(self, index: Any) -> np.ndarray:
        return faiss.serialize_index_binary(index)

    def _range(
        self, rows: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # FAISS keeps distances strictly below the radius; the API threshold is inclusive.
        return self.index.range_search(rows, int(threshold) + 1)


METRICS = {"l1": faiss.METRIC_L1, "l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}


class VectorIndex(StoredIndex):
    """Float vector index: exact (Flat) search under L1, L2 or inner product.

    Inner-product scores are reported as distances ``1 - score`` so that smaller is closer
    everywhere.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, dim: int, metric: str = "l2", **kwargs: Any) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        self.metric = metric
        super().__init__(path, dim, **kwargs)

    @property
    def width(self) -> int:
        """Floats per vector."""
        return self.dim

    def _new_index(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlat(self.dim, METRICS[self.metric]))

    def _read(self, path: str) -> Any:
        return faiss.read_index(path)

    def _serialize(self, index: Any) -> np.ndarray:
        return faiss.serialize_index(index)

    def _distances(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.astype(np.float64)
        return 1.0 - raw if self.metric == "ip" else raw

    def _range(
        self, rows: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # FAISS's radius is a strict bound on its own score (a minimum similarity for IP),
        # widened by a hair so that a distance equal to the threshold is kept.
        slack = 1e-5 * max(1.0, abs(threshold))
        radius = 1.0 - threshold - slack if self.metric == "ip" else threshold + slack
        return self.index.range_search(rows, radius)


KINDS: dict[str, type[StoredIndex]] = {"binary": BinaryIndex, "vector": VectorIndex}


def build_index(kind: str, path: str | Path, dim: int, **options: Any) -> StoredIndex:
    """The index class for a feature kind, opened at ``path``."""
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"no index for feature kind {kind!r}") from None
    return cls(path, dim, **options)
