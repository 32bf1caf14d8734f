"""FAISS indexes over the LMDB feature stores, one class per feature kind (Ray-free).

LMDB holds the truth; the FAISS index is derived from it, snapshotted to a file stamped with
the store's generation, and rebuilt whenever that stamp does not match on start.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from index_actors.store import FeatureStore

if TYPE_CHECKING:  # the text index builds on this module
    from index_actors.text import TextFeatureIndex

log = logging.getLogger(__name__)

Hit = tuple[int, float]  # (image id, distance): smaller is closer for every metric


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def transform_to_bytes(transform: Any) -> bytes:
    """A FAISS VectorTransform (such as PCA-whitening) as bytes, to ship between processes."""
    writer = faiss.VectorIOWriter()
    faiss.write_VectorTransform(transform, writer)  # type: ignore[arg-type]
    return faiss.vector_to_array(writer.data).tobytes()


def transform_from_bytes(data: bytes) -> Any:
    """The inverse of ``transform_to_bytes``."""
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(data, dtype=np.uint8), reader.data)
    return faiss.read_VectorTransform(reader)  # type: ignore[arg-type]


def whiten(transform: Any, rows: np.ndarray) -> np.ndarray:
    """Rows through a whitening transform and re-normalised; unchanged without one."""
    if transform is None:
        return rows
    out = transform.apply(np.ascontiguousarray(rows, dtype=np.float32))
    faiss.normalize_L2(out)
    return out


class UnknownImage(KeyError):
    """The image id has no stored feature of this kind."""


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
    def _check_stored_width(self) -> None:
        """Refuse a store whose features have another width (the model was changed)."""
        first = next(self.store.items(), None)
        want = self.width * self.dtype.itemsize
        if first is not None and len(first[1]) != want:
            raise ValueError(
                f"{self.path} holds features of {len(first[1])} bytes, this index wants "
                f"{want} (was the model changed?): use another data_dir, or delete {self.path} "
                "and ingest again"
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
        arr = np.frombuffer(b"".join(rows), dtype=self.dtype).reshape(len(rows), self.width)
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

    # --- live settings and trained artefacts ---------------------------------------------
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

    @property
    def _artefact_file(self) -> Path:
        return self.path / "trained.npz"

    @staticmethod
    def _tag_of(parts: dict[str, bytes]) -> str:
        if not parts:
            return ""
        digest = hashlib.sha1(usedforsecurity=False)
        for key in sorted(parts):
            digest.update(key.encode() + b"\0" + parts[key])
        return digest.hexdigest()[:16]

    def _read_parts(self) -> dict[str, bytes]:
        """The trained artefacts kept next to the store (none: an empty dict)."""
        if not self._artefact_file.exists():
            return {}
        with np.load(self._artefact_file) as saved:
            return {key: saved[key].tobytes() for key in saved.files}

    def _write_artefacts(self, parts: dict[str, bytes]) -> None:
        # One file, replaced in one rename: a crash leaves the old artefacts or the new ones,
        # never a mix; the stamp names them, so a snapshot of the other index is not loaded.
        target = self._artefact_file
        if not parts:
            target.unlink(missing_ok=True)
        else:
            tmp = self.path / "trained.tmp.npz"
            arrays = {k: np.frombuffer(v, np.uint8) for k, v in parts.items()}
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            _fsync(tmp)
            os.replace(tmp, target)
        _fsync(self.path)

    def _check_template(self, template: Any, width: int, metric: str) -> None:
        """A trained index must be empty, of the right width and metric, and able to take
        ids and remove them (re-adding an image replaces it): ``_probe`` tries both."""
        if template.d != width or not template.is_trained or template.ntotal:
            raise ValueError(
                f"need an empty trained {width}-d index, got {template.d}-d "
                f"(trained={template.is_trained}, ntotal={template.ntotal})"
            )
        if template.metric_type != METRICS[metric]:
            raise ValueError(f"the trained index's metric is not this feature's {metric.upper()}")
        try:
            self._probe(faiss.clone_index(template), width)
        except RuntimeError as exc:
            raise ValueError(
                f"this index type cannot take ids / cannot remove entries: {exc}"
            ) from None

    def _probe(self, index: Any, width: int) -> None:
        """Add one entry to an empty ``index`` and remove it, as this kind does."""
        raise NotImplementedError(f"{type(self).__name__} takes no trained index")

    def _install(self, fresh: Any, parts: dict[str, bytes]) -> None:
        """Swap in a filled index with the artefacts it was made from (both locks held)."""
        self._write_artefacts(parts)
        self.index, self._tag = fresh, self._tag_of(parts)
        self._snapshot_generation = -1  # the old snapshot is of the old index
        self.configure(**self.live)

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


#: FAISS's id -> inverted-list-entry hash map (its type stubs lack DirectMap).
HASHTABLE = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]

METRICS = {"l1": faiss.METRIC_L1, "l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}


class VectorIndex(StoredIndex):
    """Float vector index under L1, L2 or inner product: exact Flat, or a trained index.

    Inner-product scores are reported as distances ``1 - score`` so that smaller is closer
    everywhere. ``adopt`` (from ``scripts/train_index.py``) installs trained artefacts, kept
    in one file next to the store (``trained.npz``, replaced atomically) and read on start:

    - a FAISS PCA-whitening transform: stored vectors stay raw; the index holds (and queries
      are matched as) whitened, re-normalised vectors;
    - an empty trained index from a factory string (IVF-PQ, OPQ, ...), filled from LMDB. Its
      candidates are re-ranked by exact distances to the raw vectors in LMDB (``rerank``
      candidates), which buys back the recall that PQ codes lose.

    Live settings (``configure``, no rebuild, kept in ``live.json`` across restarts):
    ``nprobe``, ``rerank``, and the defaults of alpha query expansion ``aqe_n`` /
    ``aqe_alpha`` (inner product only).
    """

    dtype = np.dtype(np.float32)
    LIVE = ("nprobe", "rerank", "aqe_n", "aqe_alpha")

    def __init__(
        self,
        path: str | Path,
        dim: int,
        metric: str = "l2",
        nprobe: int = 32,
        rerank: int = 400,
        aqe_n: int = 0,
        aqe_alpha: float = 3.0,
        **kwargs: Any,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        self.metric = metric
        self.path = Path(path)
        self.template, self.whitening, self._tag = self._read_artefacts()
        super().__init__(path, dim, **kwargs)
        self._start_live(
            {"nprobe": nprobe, "rerank": rerank, "aqe_n": aqe_n, "aqe_alpha": aqe_alpha}
        )

    @property
    def width(self) -> int:
        """Floats per stored vector."""
        return self.dim

    @property
    def trained(self) -> bool:
        """Whether a trained (approximate) index is in use."""
        return self.template is not None

    @property
    def _index_width(self) -> int:
        return int(self.whitening.d_out) if self.whitening is not None else self.dim

    def _read_artefacts(self) -> tuple[Any, Any, str]:
        """(empty trained index or None, whitening or None, their tag) from disk."""
        return self._decode_artefacts(self._read_parts())

    def _decode_artefacts(self, parts: dict[str, bytes]) -> tuple[Any, Any, str]:
        white = transform_from_bytes(parts["whitening"]) if "whitening" in parts else None
        template = None
        if "index" in parts:
            template = faiss.deserialize_index(np.frombuffer(parts["index"], np.uint8))
        return template, white, self._tag_of(parts)

    def _new_index(self) -> Any:
        if self.template is not None:
            return self._ready(faiss.clone_index(self.template))
        return faiss.IndexIDMap2(faiss.IndexFlat(self._index_width, METRICS[self.metric]))

    @staticmethod
    def _ready(index: Any) -> Any:
        """An empty trained index made ready for ids: IVF keeps them, others get an id map."""
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            return faiss.IndexIDMap2(index)
        # A hash table from id to list entry: remove_ids without scanning every list.
        ivf.set_direct_map_type(HASHTABLE)
        return index

    def _load_or_rebuild(self) -> Any:
        index = super()._load_or_rebuild()
        if self.trained and (ivf := faiss.try_extract_index_ivf(index)) is not None:
            ivf.set_direct_map_type(HASHTABLE)
        return index

    def _read(self, path: str) -> Any:
        return faiss.read_index(path)

    def _serialize(self, index: Any) -> np.ndarray:
        return faiss.serialize_index(index)

    def _distances(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.astype(np.float64)
        return 1.0 - raw if self.metric == "ip" else raw

    def _indexable(self, rows: np.ndarray) -> np.ndarray:
        return whiten(self.whitening, rows)

    def _range(
        self, rows: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # FAISS's radius is a strict bound on its own score (a minimum similarity for IP),
        # widened by a hair so that a distance equal to the threshold is kept.
        slack = 1e-5 * max(1.0, abs(threshold))
        radius = 1.0 - threshold - slack if self.metric == "ip" else threshold + slack
        return self.index.range_search(rows, radius)

    # --- exact distances from LMDB: re-ranking and query expansion --------------------
    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indexable vectors of the stored ids among ``ids`` (ids, rows)."""
        values = self.store.get_many(int(i) for i in ids)
        keep = [j for j, v in enumerate(values) if v is not None]
        if not keep:
            return np.empty(0, np.int64), np.empty((0, self.index.d), np.float32)
        raw = np.frombuffer(b"".join(values[j] for j in keep), dtype=np.float32)  # type: ignore[misc]
        return ids[keep], self._indexable(raw.reshape(len(keep), self.dim))

    def _exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.metric == "ip":
            return 1.0 - rows.astype(np.float64) @ query.astype(np.float64)
        diff = rows.astype(np.float64) - query.astype(np.float64)
        return np.abs(diff).sum(1) if self.metric == "l1" else (diff * diff).sum(1)

    def _nearest(self, rows: np.ndarray, want: int) -> list[Hit]:
        if not self.trained:
            return super()._nearest(rows, want)
        queries = rows
        n = min(max(want, int(self.live["rerank"])), self.index.ntotal)
        _, labels = self.index.search(queries, n)
        hits: list[Hit] = []
        for q in range(len(rows)):
            ids, vecs = self._stored(labels[q][labels[q] >= 0])
            dists = self._exact(queries[q], vecs)
            best = np.argsort(dists, kind="stable")[:want]
            hits += [(int(ids[j]), float(dists[j])) for j in best]
        return hits

    def _within(self, rows: np.ndarray, threshold: float) -> list[Hit]:
        if not self.trained:
            return super()._within(rows, threshold)
        # Approximate distances (PQ, PCA) are too rough for a radius: the ``rerank`` nearest
        # candidates, by exact distance, are filtered instead. So a trained index returns at
        # most ``rerank`` results per query for a threshold search.
        want = min(max(int(self.live["rerank"]), 1), self.index.ntotal)
        return [(i, d) for i, d in self._nearest(rows, want) if d <= threshold]

    def _expand(self, rows: np.ndarray, n: int, alpha: float) -> np.ndarray:
        """Alpha query expansion (Radenovic et al.) of prepared rows: each query plus its
        ``n`` nearest stored vectors weighted by similarity^alpha, re-normalised."""
        if self.metric != "ip":
            raise ValueError("query expansion (aqe_n) needs an inner-product feature")
        out = rows.astype(np.float64).copy()
        for q, query in enumerate(rows):
            found = self._nearest(query[None, :], min(n, self.index.ntotal))
            _, vecs = self._stored(np.asarray([i for i, _ in found], dtype=np.int64))
            sims = np.clip(vecs.astype(np.float64) @ query.astype(np.float64), 0.0, None)
            out[q] += (sims**alpha) @ vecs.astype(np.float64)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def search(
        self,
        queries: Any,
        k: int | None = 20,
        threshold: float | None = None,
        exclude: int | None = None,
        aqe_n: int | None = None,
        aqe_alpha: float | None = None,
    ) -> list[Hit]:
        """``StoredIndex.search``, with alpha query expansion when ``aqe_n`` (or the live
        default) is > 0."""
        n = int(self.live["aqe_n"] if aqe_n is None else aqe_n)
        alpha = float(self.live["aqe_alpha"] if aqe_alpha is None else aqe_alpha)
        rows = self._as_rows(queries)
        with self._lock:
            prepared = self._indexable(rows)
            if n > 0 and self.index.ntotal:
                prepared = self._expand(prepared, n, alpha)
            return self._search_prepared(prepared, k, threshold, exclude)

    def search_by_id(
        self,
        image_id: int,
        k: int | None = 20,
        threshold: float | None = None,
        aqe_n: int | None = None,
        aqe_alpha: float | None = None,
    ) -> list[Hit]:
        """``StoredIndex.search_by_id`` with optional alpha query expansion."""
        return self.search(
            self.query_of(image_id), k, threshold, image_id, aqe_n=aqe_n, aqe_alpha=aqe_alpha
        )

    # --- trained artefacts ------------------------------------------------------------
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` stored raw vectors, chosen at random: training data."""
        _, values = self.store.sample(n, seed)
        if not values:
            return np.empty((0, self.dim), np.float32)
        return np.frombuffer(b"".join(values), dtype=np.float32).reshape(len(values), self.dim)

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Switch to a trained index and/or whitening (None: Flat / none), losing no write.

        The new index is filled from LMDB while adds and removes go on against the old
        one; the ids they touch meanwhile are replayed into the new one before the swap.
        """
        parts = {k: v for k, v in (("index", trained), ("whitening", whitening)) if v}
        template, white, _ = self._decode_artefacts(parts)
        if white is not None and white.d_in != self.dim:
            raise ValueError(f"whitening takes {white.d_in}-d vectors, not {self.dim}-d")
        width = white.d_out if white is not None else self.dim
        if template is not None:
            self._check_template(template, width, self.metric)
            fresh = self._ready(faiss.clone_index(template))
        else:
            fresh = faiss.IndexIDMap2(faiss.IndexFlat(width, METRICS[self.metric]))
        changed: set[int] = set()
        with self._lock:
            if self._changed is not None:
                raise ValueError("another index switch is running; retry when it is done")
            self._changed = changed
        prepare = functools.partial(whiten, white)
        try:
            self._rebuild(fresh, prepare)
            # The snapshot lock first (as snapshot() takes them): a snapshot of the old
            # index being written now finishes before the swap, not after it.
            with self._snapshot_lock, self._lock:
                self._replay(fresh, sorted(changed), prepare)
                self.whitening, self.template = white, template
                self._install(fresh, parts)
        finally:
            with self._lock:
                self._changed = None
        self.snapshot()
        return {"count": self.count, "trained": self.trained, "width": width}

    def _probe(self, index: Any, width: int) -> None:
        probe = self._ready(index)
        probe.add_with_ids(np.ones((1, width), np.float32), np.zeros(1, np.int64))
        probe.remove_ids(np.zeros(1, np.int64))

    def _replay(self, fresh: Any, ids: list[int], prepare: Any) -> None:
        """Bring ``fresh`` up to date with LMDB for ``ids`` (written during its fill)."""
        if not ids:
            return
        fresh.remove_ids(np.asarray(ids, dtype=np.int64))
        stored = [(i, v) for i, v in zip(ids, self.store.get_many(ids), strict=True) if v]
        if stored:
            self._add_rows(fresh, [i for i, _ in stored], [v for _, v in stored], prepare)


KINDS: dict[str, type[StoredIndex]] = {"binary": BinaryIndex, "vector": VectorIndex}


def build_index(
    kind: str, path: str | Path, dim: int, **options: Any
) -> StoredIndex | TextFeatureIndex:
    """The index class for a feature kind, opened at ``path``."""
    if kind == "keypoints":
        from index_actors.keypoints import KeypointIndex  # it builds on this module

        return KeypointIndex(path, dim, **options)
    if kind == "text":
        from index_actors.text import TextFeatureIndex

        return TextFeatureIndex(path, dim, **options)
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"no index for feature kind {kind!r}") from None
    return cls(path, dim, **options)
