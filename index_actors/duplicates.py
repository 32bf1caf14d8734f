"""Near duplicates across a whole collection, exactly: every pair of images within a
threshold, for binary hashes (phash, mirrored copies included) and for float vectors, and
the groups those pairs connect. Ray-free; the caller reads the features from a store.

Binary hashes use multi-index hashing (Norouzi, Punjani and Fleet): ``m`` disjoint chunks
of the 576 bits, and two hashes within ``r`` bits differ in some chunk by at most ``t``
bits whenever ``m * (t + 1) > r`` (pigeonhole: otherwise every chunk differs by ``t + 1``
or more, ``r + 1`` in all). Chunks need not cover all the bits (the bound holds on any
subset), which keeps the tables small. Each chunk is a table of buckets by key; joining
bucket k with the buckets ``k ^ f`` for every mask f of ``t`` or fewer bits gives the
candidates, and each is verified by its full distance, so the answer is brute force's.

``plan_for`` picks ``t`` (0 to 3) by a cost model: at 100k hashes, ``t = 0`` up to r = 35
(r + 1 chunks of up to 19 bits), ``t = 1`` to 71 (33 chunks of 17 bits at 64), ``t = 2``
to 98, and brute force above (no chunking filters enough there). Real hashes are skewed:
see ``plan_for`` for how the bits are dealt, and ``binary_pairs`` for the check on the
data's own tables that falls back to brute force where their buckets are too uneven.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import faiss
import numba
import numpy as np
import scipy.sparse
from numba import types
from numba.extending import intrinsic
from numba.typed import List
from scipy.sparse.csgraph import connected_components

from index_actors.base import METRICS

HASH_BITS = 576
HASH_BYTES = HASH_BITS // 8
WORDS = HASH_BITS // 64
#: The largest binary threshold accepted: a fifth of the bits, past any near duplicate (a
#: mirrored or 0.5x copy of a photo is within ~30, unrelated photos ~288 +- 12 apart).
MAX_BINARY_THRESHOLD = 128
#: Most bit flips probed per chunk: beyond 3 the probes (C(L, 4) per chunk) cost more than
#: comparing with everything.
MAX_FLIPS = 3
#: Offsets of all bucket tables of one side together: 2^24 int32 (64 MiB).
MAX_TABLE = 1 << 24
#: Below this many hashes brute force takes milliseconds: no index is built.
SMALL = 2048
# Costs in ns on one core of this machine (measured with bench/duplicates.py's hashes): a
# pair compared in order (brute force), a visit to a pair of buckets (the tables are read
# in order), a candidate verified (its rows read at random). Both comparisons take the
# three distances (and the same time) whether there are mirrors or not.
NS_PAIR = 5.0
NS_VISIT = 2.0
NS_VERIFY = 30.0


@dataclass(frozen=True)
class Group:
    """Images connected by near-duplicate pairs: sorted member ids and the pairs among them
    as (a, b, distance) with a < b, sorted."""

    ids: list[int]
    pairs: list[tuple[int, int, float]]


@dataclass(frozen=True)
class Plan:
    """A multi-index layout: ``flips`` bits probed per chunk, each chunk's bit positions."""

    flips: int
    chunks: tuple[tuple[int, ...], ...]

    @property
    def lengths(self) -> list[int]:
        """Bits per chunk."""
        return [len(c) for c in self.chunks]


# --- compiled kernels --------------------------------------------------------------------
def _ctpop_typer(typingctx: Any, x: Any) -> Any:  # pragma: no cover - compiled
    """LLVM's population count: one POPCNT instruction on x86-64."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return x(x), codegen


_ctpop: Any = intrinsic(_ctpop_typer)


# Numba notes that shape this code: helpers are inlined into the loops (a call that takes
# arrays counts references, atomically: ~10x the cost of a distance), and hits go to a fixed
# buffer, flushed to a list when full (an output array re-bound inside a loop, as growing
# one does, costs as much again).
@numba.njit(cache=True, inline="always")
def _distance(
    hw: np.ndarray, mw: np.ndarray, has_m: np.ndarray, a: int, b: int, threshold: int
) -> int:  # pragma: no cover - compiled
    """The pair's distance (the least of hash-hash, a's hash - b's mirror, a's mirror -
    b's hash), or threshold + 1 once all three are past the threshold after 256 or 384
    bits: most candidates and almost all brute-force pairs stop there (unrelated hashes
    differ in half their bits). The three are summed in one pass without branches (a row
    without mirror is ignored at the end), so that each word is loaded once."""
    d0 = d1 = d2 = 0
    for w in range(WORDS):
        ha, hb = hw[a, w], hw[b, w]
        d0 += int(_ctpop(ha ^ hb))
        d1 += int(_ctpop(ha ^ mw[b, w]))
        d2 += int(_ctpop(mw[a, w] ^ hb))
        if (w == 3 or w == 5) and min(d0, d1, d2) > threshold:
            return threshold + 1
    d = d0
    if has_m[b]:
        d = min(d, d1)
    if has_m[a]:
        d = min(d, d2)
    return d


@numba.njit(cache=True, inline="always")
def _emit(
    parts: Any, buf: np.ndarray, count: int, a: int, b: int, d: int
) -> int:  # pragma: no cover - compiled
    if count == buf.shape[1]:
        parts.append(buf.copy())
        count = 0
    buf[0, count] = a
    buf[1, count] = b
    buf[2, count] = d
    return count + 1


@numba.njit(cache=True, nogil=True)
def _chunk_keys(
    hashes: np.ndarray,
    positions: np.ndarray,
    lengths: np.ndarray,
    out: np.ndarray,
    start: int,
    stop: int,
) -> None:  # pragma: no cover - compiled
    """Chunk keys of rows start..stop into ``out`` (n, m): bit s of key j is hash bit
    ``positions[j, s]``."""
    for i in range(start, stop):
        for j in range(len(lengths)):
            k = 0
            for s in range(lengths[j]):
                p = positions[j, s]
                # Bit p of a hash is bit 7 - p % 8 of byte p // 8 (np.packbits is MSB first).
                k |= ((np.int64(hashes[i, p >> 3]) >> (7 - (p & 7))) & 1) << s
            out[i, j] = k


@numba.njit(cache=True, nogil=True)
def _build(
    keys: np.ndarray, rows: np.ndarray, offsets: np.ndarray, members: np.ndarray, chunks: np.ndarray
) -> None:  # pragma: no cover - compiled
    """The bucket tables of ``chunks`` over ``rows`` (counting sort): the members of
    bucket k of chunk j are ``members[j, offsets[j, k]:offsets[j, k + 1]]``, ascending."""
    size = offsets.shape[1] - 1
    for j in chunks:
        offsets[j] = 0
        for r in rows:
            offsets[j, keys[r, j] + 1] += 1
        for k in range(size):
            offsets[j, k + 1] += offsets[j, k]
        fill = offsets[j, :size].copy()
        for r in rows:  # ascending, so each bucket is sorted
            members[j, fill[keys[r, j]]] = r
            fill[keys[r, j]] += 1


@numba.njit(cache=True, nogil=True)
def _brute(
    queries: np.ndarray, hw: np.ndarray, mw: np.ndarray, has_m: np.ndarray, threshold: int
) -> Any:  # pragma: no cover - compiled
    """Pairs within the threshold, (3, k) blocks of (a, b, distance): each row of
    ``queries`` against every later row."""
    parts = List()
    buf = np.empty((3, 4096), np.int32)
    count = 0
    for q in queries:
        for b in range(q + 1, len(hw)):
            d = _distance(hw, mw, has_m, q, b, threshold)
            if d <= threshold:
                count = _emit(parts, buf, count, q, b, d)
    parts.append(buf[:, :count].copy())
    return parts


@numba.njit(cache=True, inline="always")
def _near(x: int, y: int, flips: int) -> bool:  # pragma: no cover - compiled
    return bool(int(_ctpop(np.int64(x ^ y))) <= flips)


@numba.njit(cache=True, inline="always")
def _first(
    kh: np.ndarray,
    km: np.ndarray,
    has_m: np.ndarray,
    flips: int,
    x: int,
    y: int,
    mirrored: bool,
    j: int,
) -> bool:  # pragma: no cover - compiled
    """Whether (x's hash, y's hash or mirror, chunk j) is the first place the tables meet
    the pair {x, y}: in the order hash-hash by chunk, then a's hash - b's mirror by chunk,
    then b's hash - a's mirror by chunk (a < b). Each pair is reported there only."""
    a, b = min(x, y), max(x, y)
    m = kh.shape[1]
    for i in range(m if mirrored else j):
        if _near(kh[a, i], kh[b, i], flips):
            return False
    if not mirrored:
        return True
    if x == a:
        for i in range(j):  # noqa: SIM110 - all() over a generator does not compile
            if _near(kh[a, i], km[b, i], flips):
                return False
        return True
    if has_m[b]:
        for i in range(m):
            if _near(kh[a, i], km[b, i], flips):
                return False
    for i in range(j):  # noqa: SIM110
        if _near(kh[b, i], km[a, i], flips):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _join(
    part: int,
    parts: int,
    hw: np.ndarray,
    mw: np.ndarray,
    has_m: np.ndarray,
    kh: np.ndarray,
    km: np.ndarray,
    lengths: np.ndarray,
    masks: np.ndarray,
    nmask: np.ndarray,
    flips: int,
    off_h: np.ndarray,
    mem_h: np.ndarray,
    off_m: np.ndarray,
    mem_m: np.ndarray,
    threshold: int,
    count_only: bool,
) -> tuple[Any, np.ndarray]:  # pragma: no cover - compiled
    """Pairs within the threshold through the tables, (3, k) blocks of (a, b, distance),
    and counts (bucket pairs visited, candidates).

    For each chunk and each flip mask f, bucket k of the hashes' table is joined with
    bucket k ^ f of the hashes' table (a pair's hash-hash distance) and of the mirrors'
    table (a hash against the other's mirror, both ways round), walking the buckets in
    order: the tables are read sequentially, where probing them query by query is a cache
    miss per probe. Every candidate is verified by its full distance. This worker takes
    every ``parts``-th block of buckets from ``part``. ``count_only`` counts and verifies
    nothing, for the plan's check.
    """
    BLOCK = 1024
    out = List()
    buf = np.empty((3, 4096), np.int32)
    count = 0
    visits = candidates = 0
    for mirrored in (False, True):
        if mirrored and mem_m.shape[1] == 0:
            continue
        off, mem = (off_m, mem_m) if mirrored else (off_h, mem_h)
        for j in range(len(lengths)):
            size = 1 << lengths[j]
            for start in range(part * BLOCK, size, parts * BLOCK):
                for k in range(start, min(size, start + BLOCK)):
                    a0, a1 = off_h[j, k], off_h[j, k + 1]
                    if a0 == a1:
                        continue
                    for f in range(nmask[j]):
                        kk = k ^ masks[f]
                        # Hash-hash: each pair of buckets once, and each pair within one once.
                        if not mirrored and kk < k:
                            continue
                        b0, b1 = off[j, kk], off[j, kk + 1]
                        visits += 1
                        if b0 == b1:
                            continue
                        same = not mirrored and kk == k
                        if count_only:
                            na, nb = a1 - a0, b1 - b0
                            candidates += na * (na - 1) // 2 if same else na * nb
                            continue
                        for ia in range(a0, a1):
                            x = mem_h[j, ia]
                            for ib in range(ia + 1 if same else b0, b1):
                                y = mem[j, ib]
                                if x == y:
                                    continue
                                candidates += 1
                                d = _distance(hw, mw, has_m, x, y, threshold)
                                if d <= threshold and _first(
                                    kh, km, has_m, flips, x, y, mirrored, j
                                ):
                                    count = _emit(out, buf, count, min(x, y), max(x, y), d)
    out.append(buf[:, :count].copy())
    return out, np.array([visits, candidates], np.int64)


# --- planning ------------------------------------------------------------------------------
def _flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every mask of at most ``flips`` set bits below ``bits``, ascending (so the masks of a
    shorter chunk are a prefix)."""
    masks = [sum(1 << b for b in c) for t in range(flips + 1) for c in combinations(range(bits), t)]
    return np.array(sorted(masks), np.int64)


def _probes(bits: int, flips: int) -> int:
    return sum(math.comb(bits, t) for t in range(flips + 1))


def _balance(hashes: np.ndarray) -> np.ndarray:
    """Bit positions, most balanced first (measured on an evenly spaced sample)."""
    sample = hashes[:: max(1, len(hashes) // 4096)]
    ones = np.unpackbits(sample, axis=1).mean(axis=0)
    return np.argsort(np.abs(ones - 0.5), kind="stable")


def _brute_cost(n: int) -> float:
    return n * (n - 1) / 2 * NS_PAIR


def plan_for(
    n: int,
    threshold: int,
    mirrored: bool = True,
    order: np.ndarray | None = None,
    force: bool = False,
) -> Plan | None:
    """The cheapest exact multi-index layout for ``n`` hashes (with mirrors or not) at
    ``threshold`` by the cost model (uniform random bits), or None where comparing all
    pairs costs less (unless ``force``).

    ``order`` ranks the bit positions, best first (default: as stored). Real phashes are
    skewed: low DCT frequencies are biased (the DC bit is always set) and neighbours
    correlate, so their chunk keys collide more than random ones. Bits are dealt to the
    chunks in rank order, snaking (0..m-1, m-1..0, ...), so that every chunk gets an even
    share of good and poor bits (a sum of per-chunk collision rates, each a product over
    its bits, is least when the products are equal), neighbours in rank rarely share a
    chunk, and the poorest bits are the ones left out when the tables cannot hold them all.
    """
    order = np.arange(HASH_BITS) if order is None else order
    pairs = n * (n - 1) / 2
    best: tuple[float, Plan] | None = None
    for flips in range(MAX_FLIPS + 1):
        m = -(-(threshold + 1) // (flips + 1))  # the fewest chunks the pigeonhole allows
        if m > HASH_BITS:
            continue
        # Buckets: up to ~4 per hash (sparser tables cost memory, not candidates' worth).
        bits = min(HASH_BITS // m, max(8, math.ceil(math.log2(4 * max(n, 1)))))
        while bits > 1 and m << bits > MAX_TABLE:
            bits -= 1
        used = order[: m * bits]
        chunks: list[list[int]] = [[] for _ in range(m)]
        for rank, p in enumerate(used.tolist()):
            lap, j = divmod(rank, m)
            chunks[j if lap % 2 == 0 else m - 1 - j].append(p)
        probes = _probes(bits, flips)
        # Joins: hash-hash, and with mirrors hash-mirror (which covers both ways round).
        visits = m * probes * min(2**bits, n) * (2 if mirrored else 1)
        candidates = pairs * m * probes / 2.0**bits * (3 if mirrored else 1)
        cost = visits * NS_VISIT + candidates * NS_VERIFY
        if best is None or cost < best[0]:
            best = (cost, Plan(flips, tuple(tuple(c) for c in chunks)))
    assert best is not None  # flips 0 always fits: at most 129 chunks of 4 bits
    return best[1] if force or best[0] < _brute_cost(n) else None


# --- the public functions ----------------------------------------------------------------
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
        return _concat(ids, _parallel(lambda q: _brute(q, hw, mw, has_m, threshold), rows))

    if method == "auto" and n <= NUMPY_MAX:
        return _numpy_pairs(ids, hashes, mirrors, has_m, threshold)
    if method == "brute" or n < 2 or (method == "auto" and n < SMALL):
        return brute()
    plan = plan_for(n, threshold, bool(has_m.any()), _balance(hashes), force=method == "index")
    if plan is None:
        return brute()
    lengths = np.array(plan.lengths, np.int64)
    masks = _flip_masks(int(lengths.max()), plan.flips)
    nmask = np.searchsorted(masks, 1 << lengths).astype(np.int64)
    kh, off_h, mem_h = _tables(hashes, plan, np.arange(n), workers)
    # The mirrors' tables hold the rows that have one (none: empty, and the join skips them).
    km, off_m, mem_m = _tables(mirrors, plan, np.flatnonzero(has_m), workers)

    def join(part: int, count_only: bool) -> tuple[Any, np.ndarray]:
        return _join(
            part, workers, hw, mw, has_m, kh, km, lengths, masks, nmask, plan.flips,
            off_h, mem_h, off_m, mem_m, threshold, count_only,
        )  # fmt: skip

    if method == "auto":
        # The model assumes random bits; real hashes cluster, so their buckets are uneven.
        # Count the real candidates (a sequential pass over the tables, verifying nothing)
        # and compare all pairs instead where they would cost more.
        counts = sum(c for _, c in _parallel(lambda w: join(w, True), range(workers)))
        visits, candidates = counts.tolist()
        if visits * NS_VISIT + candidates * NS_VERIFY >= _brute_cost(n):
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
    _parallel(lambda span: _chunk_keys(hashes, positions, lengths, keys, *span), spans)
    offsets = np.empty((m, (1 << int(lengths.max())) + 1), np.int32)
    members = np.empty((m, len(rows)), np.int32)
    chunks = [np.arange(w, m, workers) for w in range(workers)]
    _parallel(lambda c: _build(keys, rows.astype(np.int64), offsets, members, c), chunks)
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
