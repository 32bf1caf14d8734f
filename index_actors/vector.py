"""The vector index kind: float vectors under L1, L2 or inner product, exact or trained,
with optional PCA-whitening and alpha query expansion. Ray-free."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_actors.base import METRICS
from index_actors.interface import Hit, InvalidInput
from index_actors.trained import Trained


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


#: FAISS's id -> inverted-list-entry hash map (its type stubs lack DirectMap).
HASHTABLE = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]


class VectorIndex(Trained):
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
    LIVE: tuple[str, ...] = ("nprobe", "rerank", "aqe_n", "aqe_alpha")

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

    def describe(self) -> dict[str, Any]:
        """Count, live settings, and whether a trained index and whitening are in use."""
        return {**super().describe(), "whitened": self.whitening is not None}

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
        near = [[i for i, _ in self._nearest(q[None, :], min(n, self.index.ntotal))] for q in rows]
        return expanded(rows, self._terms(rows, near, alpha))

    def _aqe(self, aqe_n: int | None, aqe_alpha: float | None) -> tuple[int, float]:
        """(n, alpha) of a query expansion: the live defaults unless given."""
        n = int(self.live["aqe_n"] if aqe_n is None else aqe_n)
        alpha = float(self.live["aqe_alpha"] if aqe_alpha is None else aqe_alpha)
        if n > 0 and self.metric != "ip":
            raise InvalidInput("query expansion (aqe_n) needs an inner-product feature")
        return n, alpha

    def _terms(self, rows: np.ndarray, near: list[list[int]], alpha: float) -> np.ndarray:
        """Per prepared row q: the sum of sim^alpha * v over the stored vectors v among
        ``near[q]`` (what a query expansion adds to the row)."""
        out = np.zeros(rows.shape, np.float64)
        for q, query in enumerate(rows):
            _, vecs = self._stored(np.asarray(near[q], dtype=np.int64))
            sims = np.clip(vecs.astype(np.float64) @ query.astype(np.float64), 0.0, None)
            out[q] = (sims**alpha) @ vecs.astype(np.float64)
        return out

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
        n, alpha = self._aqe(aqe_n, aqe_alpha)
        rows = self._as_rows(queries)
        with self._lock:
            prepared = self._indexable(rows)
            if n > 0 and self.index.ntotal:
                prepared = self._expand(prepared, n, alpha)
            return self._search_prepared(prepared, k, threshold, exclude)

    # --- a query expansion spread over shards (IndexClient: each step on every shard) ----
    def expansion(
        self, queries: Any, aqe_n: int | None = None, aqe_alpha: float | None = None
    ) -> tuple[np.ndarray, int, float, list[list[Hit]]]:
        """Step 1: the prepared query rows, the expansion's (n, alpha), and this shard's
        ``n`` nearest to each row (none when n is 0)."""
        n, alpha = self._aqe(aqe_n, aqe_alpha)
        rows = self._as_rows(queries)
        with self._lock:
            prepared = self._indexable(rows)
            want = min(n, self.index.ntotal)
            near = [self._nearest(q[None, :], want) if want else [] for q in prepared]
        return prepared, n, alpha, near

    def expansion_terms(self, rows: np.ndarray, near: list[list[int]], alpha: float) -> np.ndarray:
        """Step 2: this shard's part of each row's expansion (``near``: the ids of the n
        nearest of all shards; those stored here count)."""
        with self._lock:
            return self._terms(rows, near, alpha)

    def search_prepared(
        self, rows: np.ndarray, k: int | None, threshold: float | None, exclude: int | None
    ) -> list[Hit]:
        """Step 3: ``search`` by rows already prepared (and expanded)."""
        with self._lock:
            return self._search_prepared(rows, k, threshold, exclude)

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

    def adopt(self, trained: bytes | None, whitening: bytes | None = None) -> dict[str, Any]:
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


def expanded(rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Prepared query rows plus their expansion terms, re-normalised (float32)."""
    out = rows.astype(np.float64) + terms
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)
