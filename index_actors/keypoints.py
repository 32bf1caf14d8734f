"""The keypoint index: find stored images that contain a crop of the query (Ray-free).

Each image's keypoints and descriptors are one LMDB value (``extractors.local.pack`` with an
8-byte header: the first descriptor id of the image). Its descriptors get consecutive ids in
one FAISS index, so descriptor id -> image id is a binary search over sorted id ranges kept
in memory (``RangeMap``), rebuilt from LMDB on start. A search votes per image over the k
nearest descriptors of each query descriptor, then re-matches the best candidates mutually
(kornia ``match_smnn``) and counts the RANSAC (MAGSAC++) inliers of a homography.

The descriptor index is exact (8-bit, Flat) until one is trained: by ``scripts/train_index.py
local --factory "IVF1024,PQ16"``, or by the index itself in the background once it holds
``train_at`` descriptors (exact search grows with the collection: a 1600-px query's search
at 420 images 153 ms exact against 53 ms trained, the same crops found; bench ``crops``
and ``latency``). ``adopt``
fills the new index from LMDB while the index serves and swaps it in; ``nprobe`` is live.
Re-matching always uses the exact descriptors in LMDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from extractors.keypoint_pack import DESC, keypoint_count, pack, unpack
from index_actors.interface import Hit, UnknownImage
from index_actors.keypoint_match import cores, inliers, mutual_matches, ranked, verifiers
from index_actors.ranges import RangeMap
from index_actors.store import numbered
from index_actors.trained import Trained


class KeypointIndex(Trained):
    """Images by their local features; ``search`` scores by geometrically verified matches.

    The distance of a hit is ``1 / (1 + inliers)``: smaller is closer, as everywhere.
    """

    dtype = np.dtype(np.uint8)
    LIVE: tuple[str, ...] = ("nprobe",)

    def __init__(
        self,
        path: str | Path,
        dim: int = DESC,
        nprobe: int = 16,
        train_at: int | None = None,
        train_factory: str = "IVF1024,PQ16",
        **kwargs: Any,
    ) -> None:
        self.train_at = train_at
        self.train_factory = train_factory
        self.ranges = RangeMap()
        self.path = Path(path)
        parts = self._read_parts()
        self.template = _template(parts.get("index"))
        self._tag = self._tag_of(parts)
        self._adopting = False
        super().__init__(path, dim, **kwargs)
        self._slack = self._quantisation_error(self.index, self.trained)
        self._start_live({"nprobe": nprobe})

    @property
    def width(self) -> int:
        """Bytes of one descriptor."""
        return self.dim

    def _check_stored_width(self) -> None:
        pass  # variable-length values; the descriptor width is fixed by the format

    def _new_index(self) -> Any:
        if self.template is not None:
            return faiss.clone_index(self.template)
        return self._exact_index()

    def _exact_index(self) -> Any:
        # Descriptors are bytes already: the 8-bit "direct" quantiser stores them as they
        # are (128 B each, exact L2), a quarter of a float index.
        sq = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit_direct)
        return faiss.IndexIDMap(sq)

    def _read(self, path: str) -> Any:
        return faiss.read_index(path)

    def _serialize(self, index: Any) -> np.ndarray:
        return faiss.serialize_index(index)

    @staticmethod
    def _split(value: bytes | memoryview) -> tuple[int, np.ndarray]:
        start, packed = numbered(value)
        return start, np.frombuffer(packed, np.uint8)

    def _load_or_rebuild(self) -> Any:
        entries = []
        for image_id, value in self.store.items():
            start, packed = self._split(value)
            entries.append((image_id, start, keypoint_count(packed)))
        self.ranges.load(entries)
        return super()._load_or_rebuild()

    def _rebuild(self, index: Any = None, prepare: Any = None) -> Any:
        index = self._new_index() if index is None else index
        self._fill(index)
        return index

    def _fill(self, index: Any) -> dict[int, int]:
        """Add every stored descriptor to ``index``; returns the ranges added (start: count)."""
        added = {}
        for _, value in self.store.items():
            start, packed = self._split(value)
            _add_range(index, start, unpack(packed)[1])
            added[start] = keypoint_count(packed)
        return added

    def _expected_total(self) -> int:
        return self.ranges.descriptors

    # --- writes ---------------------------------------------------------------------
    def add(self, ids: list[int], features: Any) -> int:
        """Store packed keypoint features (one per id); re-adding an id replaces it."""
        if len(ids) != len(features):
            raise ValueError(f"{len(ids)} ids for {len(features)} features")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        parsed = [unpack(np.asarray(f, np.uint8)) for f in features]
        with self._lock:
            starts, replaced = self.store.put_numbered(
                [(i, len(d), pack(p, d).tobytes()) for i, (p, d) in zip(ids, parsed, strict=True)]
            )
            # LMDB committed: the add is durable; now the derived index and ranges.
            for start, packed in replaced:
                self._drop(start, np.frombuffer(packed, np.uint8))
            for image_id, start, (_, desc) in zip(ids, starts, parsed, strict=True):
                _add_range(self.index, start, desc)
                self.ranges.add(image_id, start, len(desc))
            self._maybe_train(self.ranges.descriptors)
        return len(ids)

    def _drop(self, start: int, packed: np.ndarray) -> None:
        _remove_range(self.index, start, keypoint_count(packed))
        self.ranges.remove(start)

    def remove(self, ids: list[int]) -> list[int]:
        """Delete images; returns the ids that were stored."""
        with self._lock:
            values = self.store.get_many(ids)
            removed = self.store.delete(ids)
            for value in values:
                if value is not None:
                    self._drop(*self._split(value))
            return removed

    def get(self, image_id: int) -> np.ndarray:
        """The packed keypoints and descriptors of a stored image."""
        raw = self.store.get(image_id)
        if raw is None:
            raise UnknownImage(image_id)
        return self._split(raw)[1].copy()

    @property
    def count(self) -> int:
        """Stored images (with or without keypoints)."""
        return self.store.count()

    # --- training -----------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` stored descriptors (float32 rows) from random images: training data."""
        # ~200 descriptors per image: n / 100 images give enough with few keypoints too.
        _, values = self.store.sample(max(1, -(-n // 100)), seed)
        rows = [unpack(self._split(v)[1])[1] for v in values]
        if not rows:
            return np.empty((0, self.dim), np.float32)
        desc = np.concatenate(rows)
        pick = np.random.default_rng(seed).permutation(len(desc))[:n]
        return desc[np.sort(pick)].astype(np.float32)

    def adopt(self, trained: bytes | None, whitening: bytes | None = None) -> dict[str, Any]:
        """Switch to a trained descriptor index (None: back to exact), losing no write.

        The new index is filled from LMDB while adds and removes go on against the old one.
        Descriptor ids are never reused, so at the swap the ranges that changed meanwhile
        are exactly the difference between the ranges filled and the current ones.
        """
        if whitening:
            raise ValueError("local features take no whitening")
        template = _template(trained)
        if template is not None:
            self._check_template(template, self.dim, "l2")
        fresh = faiss.clone_index(template) if template is not None else self._exact_index()
        with self._lock:
            if self._adopting:
                raise ValueError("another index switch is running; retry when it is done")
            self._adopting = True
        try:
            filled = self._fill(fresh)
            slack = self._quantisation_error(fresh, template is not None)
            with self._snapshot_lock, self._lock:
                current = dict(
                    zip(self.ranges.starts.tolist(), self.ranges.images.tolist(), strict=True)
                )
                for start in filled.keys() - current.keys():
                    _remove_range(fresh, start, filled[start])
                for start in current.keys() - filled.keys():
                    value = self.store.get(current[start])
                    if value is not None:
                        begin, packed = self._split(value)
                        _add_range(fresh, begin, unpack(packed)[1])
                self.template = template
                self._install(fresh, {"index": trained} if trained else {})
                self._slack = slack
        finally:
            with self._lock:
                self._adopting = False
        self.snapshot()
        return {"count": self.count, "trained": self.trained, "descriptors": fresh.ntotal}

    def _probe(self, index: Any, width: int) -> None:
        _add_range(index, 0, np.ones((1, width), np.uint8))
        _remove_range(index, 0, 1)

    def _quantisation_error(self, index: Any, trained: bool) -> float:
        """Mean squared error of a trained ``index``'s codes over stored descriptors.

        A PQ distance is about the true squared distance plus this (the code's error is not
        correlated with the query), so the vote threshold, given in true distances, is
        widened by it, or a crop finds no vote for its scene in a large trained index
        (docs/architecture.md).
        """
        if not trained:
            return 0.0
        sample = self.sample(2000)
        if not len(sample):
            return 0.0
        try:
            decoded = index.sa_decode(index.sa_encode(sample))
        except RuntimeError:  # an index type without a standalone codec: no correction
            return 0.0
        return float(((decoded - sample) ** 2).sum(1).mean())

    # --- search -----------------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int | None = 20,
        threshold: float | None = None,
        exclude: int | None = None,
        k_clusters: int = 5,
        knn_min_matches: int = 1,
        matching_threshold: float = 120.0,
        candidates: int = 20,
        use_smnn_matching: bool = True,
        smnn_match_threshold: float = 0.85,
        use_ransac: bool = True,
    ) -> list[Hit]:
        """Stored images containing the query (one or more packed variants, as rows).

        Per query descriptor its ``k_clusters`` nearest stored descriptors within
        ``matching_threshold`` (L2) vote for their image; the ``candidates`` images with the
        most votes (at least ``knn_min_matches``) are re-matched mutually and verified by a
        homography. Each image keeps its best variant. ``threshold`` keeps hits with a
        distance ``1 / (1 + inliers)`` at most that.

        ``matching_threshold`` is a true L2 distance in stored units (RootSIFT x 512: 120 is
        a Hellinger distance of 0.23); with a trained index it is widened by the codes' mean
        error (``_quantisation_error``).
        """
        rows = np.atleast_2d(np.asarray(queries, np.uint8))
        variants = [v for v in (unpack(row) for row in rows) if len(v[1])]
        scores: dict[int, int] = {}
        for image_id, score in self._score(
            variants,
            k_clusters,
            knn_min_matches,
            matching_threshold,
            candidates,
            use_smnn_matching,
            smnn_match_threshold,
            use_ransac,
            exclude,
        ):
            scores[image_id] = max(scores.get(image_id, 0), score)
        hits = sorted(
            ((i, 1.0 / (1 + s)) for i, s in scores.items() if s > 0), key=lambda h: (h[1], h[0])
        )
        if threshold is not None:
            hits = [h for h in hits if h[1] <= threshold]
        return hits[:k] if k is not None else hits

    def search_by_id(
        self, image_id: int, k: int | None = 20, threshold: float | None = None, **options: Any
    ) -> list[Hit]:
        """Images that share a region with a stored image (itself left out)."""
        return self.search(self.get(image_id)[None, :], k, threshold, image_id, **options)

    def _score(
        self,
        variants: list[tuple[np.ndarray, np.ndarray]],
        k_clusters: int,
        knn_min_matches: int,
        matching_threshold: float,
        candidates: int,
        use_smnn: bool,
        smnn_threshold: float,
        use_ransac: bool,
        exclude: int | None,
    ) -> list[tuple[int, int]]:
        """(image, score) of each variant's candidates: its votes, or with ``use_smnn`` its
        mutual matches (``use_ransac``: their homography's inliers).

        The variants' descriptors are searched in one call, and the candidates are
        verified on a few threads (NumPy's matrix product and OpenCV release the GIL).
        """
        if not variants:
            return []
        with self._lock:
            if self.index.ntotal == 0:
                return []
            # Hundreds of query descriptors, which FAISS splits over OpenMP threads: every
            # core, where Ray starts an actor that reserves no CPU with one
            # (OMP_NUM_THREADS=1); set per call, as it is the calling thread's setting. Two
            # cores halve the search (docs/architecture.md, "Measured numbers").
            faiss.omp_set_num_threads(cores())
            dists, labels = self.index.search(
                np.concatenate([d for _, d in variants]).astype(np.float32),
                min(k_clusters, self.index.ntotal),
            )
            owners = self.ranges.lookup(labels.ravel()).reshape(labels.shape)
        close = (dists < matching_threshold**2 + self._slack) & (owners >= 0)
        out: list[tuple[int, int]] = []
        checks: list[tuple[np.ndarray, np.ndarray, int]] = []
        start = 0
        for points, desc in variants:
            rows = slice(start, start + len(desc))
            start += len(desc)
            best = ranked(close[rows], owners[rows], knn_min_matches, candidates, exclude)
            if use_smnn:
                checks += [(points, desc, image_id) for image_id, _ in best]
            else:
                out += best
        if not checks:
            return out
        ids = sorted({image_id for _, _, image_id in checks})
        stored = {
            i: unpack(self._split(raw)[1])
            for i, raw in zip(ids, self.store.get_many(ids), strict=True)
            if raw is not None
        }

        def verify(check: tuple[np.ndarray, np.ndarray, int]) -> tuple[int, int]:
            points, desc, image_id = check
            their_points, their_desc = stored[image_id]
            matches = mutual_matches(desc, their_desc, smnn_threshold)
            if use_ransac:
                return image_id, inliers(points[matches[:, 0]], their_points[matches[:, 1]])
            return image_id, len(matches)

        todo = [c for c in checks if c[2] in stored]
        return out + list(verifiers().map(verify, todo))


def _template(blob: bytes | None) -> Any:
    """An empty trained index from its serialized form (None: none)."""
    return faiss.deserialize_index(np.frombuffer(blob, np.uint8)) if blob else None


def _add_range(index: Any, start: int, desc: np.ndarray) -> None:
    """Descriptors with the consecutive ids ``start``, ``start + 1``, ..."""
    if len(desc):
        index.add_with_ids(desc.astype(np.float32), np.arange(start, start + len(desc)))


def _remove_range(index: Any, start: int, count: int) -> None:
    if count:
        index.remove_ids(faiss.IDSelectorRange(start, start + count))
