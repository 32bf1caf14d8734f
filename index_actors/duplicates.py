"""Near duplicates across a whole collection, exactly: every pair of images within a
threshold, for binary hashes (phash, mirrored copies included) and for float vectors, and
the groups those pairs connect. Ray-free; the caller reads the features from a store.

Binary hashes are joined by multi-index hashing (``index_actors/hash_join.py``: its
kernels and the cost model that picks a layout). Real hashes are skewed: see ``plan_for``
for how the bits are dealt, and ``binary_pairs`` for the check on the data's own tables
that falls back to brute force where their buckets are too uneven.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numba
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from index_actors.base import METRICS
from index_actors.hash_join import (
    HASH_BITS,
    HASH_BYTES,
    NS_VERIFY,
    NS_VISIT,
    Plan,
    balanced_bits,
    brute_cost,
    brute_pairs,
    build_tables,
    chunk_keys,
    flip_masks,
    mih_join,
    plan_for,
)

#: The largest binary threshold accepted: a fifth of the bits, past any near duplicate (a
#: mirrored or 0.5x copy of a photo is within ~30, unrelated photos ~288 +- 12 apart).
MAX_BINARY_THRESHOLD = 128
#: Below this many hashes brute force takes milliseconds: no index is built.
SMALL = 2048


@dataclass(frozen=True)
class Group:
    """Images connected by near-duplicate pairs: sorted member ids and the pairs among them
    as (a, b, distance) with a < b, sorted."""

    ids: list[int]
    pairs: list[tuple[int, int, float]]


def _threads() -> int:
    return max(1, min(numba.get_num_threads(), len(os.sched_getaffinity(0))))


def _parallel(kernel: Callable[[Any], Any], shares: Iterable[Any]) -> list[Any]:
    """``kernel`` over each share, in threads (the kernels release the GIL)."""
    shares = list(shares)
    if len(shares) == 1:
        return [kernel(shares[0])]
    with ThreadPoolExecutor(len(shares)) as pool:
        return list(pool.map(kernel, shares))


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) like the features, got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {ids.dtype}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be distinct")
    return ids.astype(np.int64)


def _by_id(
    ids: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs as id pairs with a < b, sorted by (a, b)."""
    ia, ib = ids[rows_a], ids[rows_b]
    a, b = np.minimum(ia, ib), np.maximum(ia, ib)
    order = np.lexsort((b, a))
    return a[order], b[order], dist[order]


#: Up to this many hashes, "auto" compares all pairs in NumPy: no compiled kernel, so a
#: small gallery's first grouping does not wait seconds for numba to compile them.
NUMPY_MAX = 2048
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _numpy_pairs(
    ids: np.ndarray, hashes: np.ndarray, mirrors: np.ndarray, has_m: np.ndarray, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within the threshold, in NumPy, blocks of 256 rows against all rows;
    distances as ``_distance`` takes them (the mirrored ones only where there is one)."""
    n, far = len(hashes), np.int32(HASH_BITS + 1)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, n, 256):
        q = slice(start, min(n, start + 256))

        def bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return _POPCOUNT[x[:, None, :] ^ y[None, :, :]].sum(-1, dtype=np.int32)

        dist = bits(hashes[q], hashes)
        if has_m.any():
            to_mirror = np.where(has_m[None, :], bits(hashes[q], mirrors), far)
            from_mirror = np.where(has_m[q, None], bits(mirrors[q], hashes), far)
            dist = np.minimum(dist, np.minimum(to_mirror, from_mirror))
        rows, cols = np.nonzero(dist <= threshold)
        later = cols > rows + start  # each pair once, no image with itself
        rows, cols = rows[later], cols[later]
        found.append((rows + start, cols, dist[rows, cols]))
    a, b, d = (np.concatenate([f[k] for f in found]) for k in range(3))
    return _by_id(ids, a.astype(np.int64), b.astype(np.int64), d.astype(np.int32))


def binary_pairs(
    ids: np.ndarray,
    hashes: np.ndarray,
    threshold: int,
    mirrors: np.ndarray | None = None,
    has_mirror: np.ndarray | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct images within ``threshold`` bits (inclusive), exactly.

    ``hashes`` are (n, 72) packed 576-bit hashes; ``mirrors[i]`` is image i's hash mirrored
    left-right, used where ``has_mirror[i]`` (every row when ``has_mirror`` is None). A
    pair's distance is the least of hash-hash, a's hash to b's mirror and a's mirror to b's
    hash, so mirrored copies pair up. Returns ids ``a < b`` (int64), sorted, and the
    distances (int32). ``method``: "index" (multi-index hashing), "brute" (all pairs), or
    "auto": the index unless the cost model, or the candidates counted on the data's own
    tables, say that comparing all pairs costs less.
    """
    ids, hashes, mirrors, has_m = _binary_inputs(ids, hashes, threshold, mirrors, has_mirror)
    if method not in ("auto", "index", "brute"):
        raise ValueError(f"method must be auto, index or brute, got {method!r}")
    threshold = int(threshold)
    n = len(hashes)
    hw, mw = hashes.view(np.uint64), mirrors.view(np.uint64)
    workers = _threads()

    def brute() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [np.arange(w, n, workers, dtype=np.int64) for w in range(workers)]
        return _concat(ids, _parallel(lambda q: brute_pairs(q, hw, mw, has_m, threshold), rows))

    if method == "auto" and n <= NUMPY_MAX:
        return _numpy_pairs(ids, hashes, mirrors, has_m, threshold)
    if method == "brute" or n < 2 or (method == "auto" and n < SMALL):
        return brute()
    plan = plan_for(n, threshold, bool(has_m.any()), balanced_bits(hashes), force=method == "index")
    if plan is None:
        return brute()
    lengths = np.array(plan.lengths, np.int64)
    masks = flip_masks(int(lengths.max()), plan.flips)
    nmask = np.searchsorted(masks, 1 << lengths).astype(np.int64)
    kh, off_h, mem_h = _tables(hashes, plan, np.arange(n), workers)
    # The mirrors' tables hold the rows that have one (none: empty, and the join skips them).
    km, off_m, mem_m = _tables(mirrors, plan, np.flatnonzero(has_m), workers)

    def join(part: int, count_only: bool) -> tuple[Any, np.ndarray]:
        return mih_join(
            part, workers, hw, mw, has_m, kh, km, lengths, masks, nmask, plan.flips,
            off_h, mem_h, off_m, mem_m, threshold, count_only,
        )  # fmt: skip

    if method == "auto":
        # The model assumes random bits; real hashes cluster, so their buckets are uneven.
        # Count the real candidates (a sequential pass over the tables, verifying nothing)
        # and compare all pairs instead where they would cost more.
        counts = sum(c for _, c in _parallel(lambda w: join(w, True), range(workers)))
        visits, candidates = counts.tolist()
        if visits * NS_VISIT + candidates * NS_VERIFY >= brute_cost(n):
            return brute()
    return _concat(ids, _parallel(lambda w: join(w, False)[0], range(workers)))


def _binary_inputs(
    ids: np.ndarray,
    hashes: np.ndarray,
    threshold: int,
    mirrors: np.ndarray | None,
    has_mirror: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked, contiguous inputs: ids, hashes, mirrors (the hashes where there are none)
    and which rows have a mirror."""
    hashes = np.ascontiguousarray(hashes)
    if hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES or hashes.dtype != np.uint8:
        raise ValueError(
            f"hashes must be uint8 of shape (n, {HASH_BYTES}), got {hashes.dtype} {hashes.shape}"
        )
    n = len(hashes)
    ids = _check_ids(ids, n)
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer):
        raise ValueError(f"threshold must be a whole number of bits, got {threshold!r}")
    if not 0 <= threshold <= MAX_BINARY_THRESHOLD:
        raise ValueError(
            f"threshold must be from 0 to {MAX_BINARY_THRESHOLD} bits, got {threshold}"
        )
    if mirrors is None:
        if has_mirror is not None:
            raise ValueError("has_mirror needs mirrors")
        return ids, hashes, hashes, np.zeros(n, np.bool_)
    mirrors = np.ascontiguousarray(mirrors)
    if mirrors.shape != hashes.shape or mirrors.dtype != np.uint8:
        raise ValueError(
            f"mirrors must be uint8 of shape {hashes.shape} like the hashes, got "
            f"{mirrors.dtype} {mirrors.shape}"
        )
    has_m = np.ones(n, np.bool_) if has_mirror is None else np.asarray(has_mirror)
    if has_m.shape != (n,) or has_m.dtype != np.bool_:
        raise ValueError(
            f"has_mirror must be bool of shape ({n},), got {has_m.dtype} {has_m.shape}"
        )
    return ids, hashes, mirrors, has_m


def _tables(
    hashes: np.ndarray, plan: Plan, rows: np.ndarray, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every hash's chunk keys (n, m), and the bucket tables of ``rows`` (offsets,
    members), built in threads: keys by spans of rows, tables by chunk."""
    n, m = len(hashes), len(plan.chunks)
    lengths = np.array(plan.lengths, np.int64)
    positions = np.zeros((m, int(lengths.max())), np.int64)
    for j, chunk in enumerate(plan.chunks):
        positions[j, : len(chunk)] = chunk
    keys = np.empty((n, m), np.int32)
    spans = [(w * n // workers, (w + 1) * n // workers) for w in range(workers)]
    _parallel(lambda span: chunk_keys(hashes, positions, lengths, keys, *span), spans)
    offsets = np.empty((m, (1 << int(lengths.max())) + 1), np.int32)
    members = np.empty((m, len(rows)), np.int32)
    chunks = [np.arange(w, m, workers) for w in range(workers)]
    _parallel(lambda c: build_tables(keys, rows.astype(np.int64), offsets, members, c), chunks)
    return keys, offsets, members


def _concat(ids: np.ndarray, parts: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernels' (3, k) blocks of row pairs as id pairs."""
    rows = np.concatenate([block for blocks in parts for block in blocks], axis=1)
    return _by_id(ids, rows[0].astype(np.int64), rows[1].astype(np.int64), rows[2])


def vector_pairs(
    ids: np.ndarray, vectors: np.ndarray, threshold: float, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct vectors within ``threshold`` (inclusive), exactly.

    Distances in ``VectorIndex``'s units: squared L2 for "l2", the sum of absolute
    differences for "l1", ``1 - dot`` for "ip" (1 - cosine for unit vectors). Returns ids
    ``a < b`` (int64), sorted, and distances (float64).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {vectors.shape}")
    n, dim = vectors.shape
    ids = _check_ids(ids, n)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    index = faiss.IndexFlat(dim, METRICS[metric])
    index.add(vectors)
    # FAISS's bound is strict and its float32 sums round: search a little wider, then keep
    # what the exact float64 distance puts within the threshold.
    slack = 1e-3 * max(1.0, abs(threshold))
    radius = 1.0 - threshold - slack if metric == "ip" else threshold + slack
    found_a, found_b = [], []
    block = 4096  # rows per range search: bounds the result buffers
    for start in range(0, n, block):
        lims, _, labels = index.range_search(vectors[start : start + block], radius)
        bounds = np.asarray(lims, np.int64)
        counts = bounds[1:] - bounds[:-1]
        rows = np.repeat(np.arange(start, start + len(counts)), counts)
        keep = labels > rows
        found_a.append(rows[keep])
        found_b.append(labels[keep])
    a = np.concatenate(found_a or [np.empty(0, np.int64)]).astype(np.int64)
    b = np.concatenate(found_b or [np.empty(0, np.int64)]).astype(np.int64)
    x, y = vectors[a].astype(np.float64), vectors[b].astype(np.float64)
    if metric == "ip":
        dist = 1.0 - (x * y).sum(1)
    elif metric == "l1":
        dist = np.abs(x - y).sum(1)
    else:
        dist = ((x - y) ** 2).sum(1)
    keep = dist <= threshold
    return _by_id(ids, a[keep], b[keep], dist[keep])


def groups(a: np.ndarray, b: np.ndarray, dist: np.ndarray) -> list[Group]:
    """Connected components of the pairs (a[i], b[i], dist[i]), largest first, ties by
    smallest member id. Images in no pair are in no group."""
    a, b, dist = np.asarray(a), np.asarray(b), np.asarray(dist)
    if not a.shape == b.shape == dist.shape or a.ndim != 1:
        raise ValueError(
            f"a, b and dist must be 1-D of one length, got {a.shape} {b.shape} {dist.shape}"
        )
    if len(a) == 0:
        return []
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inverse[: len(a)], inverse[len(a) :]
    graph = scipy.sparse.coo_matrix((np.ones(len(a)), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    pairs: dict[int, list[tuple[int, int, float]]] = {}
    for i in order.tolist():
        pairs.setdefault(int(label[ia[i]]), []).append((int(lo[i]), int(hi[i]), dist[i].item()))
    members: dict[int, list[int]] = {}
    for node, comp in zip(nodes.tolist(), label.tolist(), strict=True):
        members.setdefault(comp, []).append(int(node))
    out = [Group(sorted(members[c]), pairs[c]) for c in members]
    out.sort(key=lambda g: (-len(g.ids), g.ids[0]))
    return out
