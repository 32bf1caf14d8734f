"""Multi-index hashing over 576-bit hashes (Norouzi, Punjani and Fleet): the compiled
kernels and the layout plan behind ``duplicates.binary_pairs``. Ray-free.

Two hashes within ``r`` bits differ in some of ``m`` disjoint chunks by at most ``t`` bits
whenever ``m * (t + 1) > r`` (pigeonhole: otherwise every chunk differs by ``t + 1`` or more,
``r + 1`` in all). Chunks need not cover all the bits (the bound holds on any subset), which
keeps the tables small. Each chunk is a table of buckets by key; joining bucket k with the
buckets ``k ^ f`` for every mask f of ``t`` or fewer bits gives the candidates, and each is
verified by its full distance, so the answer is brute force's.

``plan_for`` picks ``t`` (0 to 3) by a cost model: at 100k hashes, ``t = 0`` up to r = 35
(r + 1 chunks of up to 19 bits), ``t = 1`` to 71 (33 chunks of 17 bits at 64), ``t = 2``
to 98, and brute force above (no chunking filters enough there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic
from numba.typed import List

HASH_BITS = 576
HASH_BYTES = HASH_BITS // 8
WORDS = HASH_BITS // 64
#: Most bit flips probed per chunk: beyond 3 the probes (C(L, 4) per chunk) cost more than
#: comparing with everything.
MAX_FLIPS = 3
#: Offsets of all bucket tables of one side together: 2^24 int32 (64 MiB).
MAX_TABLE = 1 << 24
# Costs in ns on one core of this machine (measured with bench/duplicates.py's hashes): a
# pair compared in order (brute force), a visit to a pair of buckets (the tables are read
# in order), a candidate verified (its rows read at random). Both comparisons take the
# three distances (and the same time) whether there are mirrors or not.
NS_PAIR = 5.0
NS_VISIT = 2.0
NS_VERIFY = 30.0


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
def chunk_keys(
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
def build_tables(
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
def brute_pairs(
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
def mih_join(
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
def flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every mask of at most ``flips`` set bits below ``bits``, ascending (so the masks of a
    shorter chunk are a prefix)."""
    masks = [sum(1 << b for b in c) for t in range(flips + 1) for c in combinations(range(bits), t)]
    return np.array(sorted(masks), np.int64)


def _probes(bits: int, flips: int) -> int:
    return sum(math.comb(bits, t) for t in range(flips + 1))


def balanced_bits(hashes: np.ndarray) -> np.ndarray:
    """Bit positions, most balanced first (measured on an evenly spaced sample)."""
    sample = hashes[:: max(1, len(hashes) // 4096)]
    ones = np.unpackbits(sample, axis=1).mean(axis=0)
    return np.argsort(np.abs(ones - 0.5), kind="stable")


def brute_cost(n: int) -> float:
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
    return best[1] if force or best[0] < brute_cost(n) else None
