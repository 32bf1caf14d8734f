"""The all-pairs near-duplicate finder (index_actors/duplicates.py, hash_join.py), against
brute force."""

from pathlib import Path

import numpy as np
import pytest

from extractors.phash import PHash
from index_actors import duplicates
from index_actors.duplicates import (
    HASH_BITS,
    MAX_BINARY_THRESHOLD,
    SMALL,
    Group,
    binary_pairs,
    groups,
    plan_for,
    vector_pairs,
)
from tests.helpers import reencode

THRESHOLDS = [0, 1, 16, 63, 64, 65, 128]


def flipped(rng: np.random.Generator, packed: np.ndarray, bits: int) -> np.ndarray:
    """``packed`` with ``bits`` distinct bits flipped."""
    flip = np.zeros(HASH_BITS, bool)
    flip[rng.choice(HASH_BITS, bits, replace=False)] = True
    return packed ^ np.packbits(flip)


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random ids, hashes, mirrors and has_mirror (70 %), with planted groups: copies of a
    row's hash, or of its mirror, with 0-130 bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, (n, 72), dtype=np.uint8)
    mirrors = rng.integers(0, 256, (n, 72), dtype=np.uint8)
    for _ in range(n // 8):
        source, *copies = rng.choice(n, int(rng.integers(2, 5)), replace=False)
        for row in copies:
            mirrored = rng.random() < 0.3
            bits = int(rng.integers(0, 131))
            h, m = (mirrors, hashes) if mirrored else (hashes, mirrors)
            hashes[row], mirrors[row] = flipped(rng, h[source], bits), m[source]
    has_mirror = rng.random(n) < 0.7
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # not the row order
    return ids, hashes, mirrors, has_mirror


def brute_distances(
    hashes: np.ndarray, mirrors: np.ndarray | None, has_mirror: np.ndarray | None
) -> np.ndarray:
    """All-pairs distance matrix by the definition, in numpy (float32 dot products of
    0/1 bits are exact)."""
    h = np.unpackbits(hashes, axis=1).astype(np.float32)

    def ham(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x @ (1 - y).T + (1 - x) @ y.T

    d = ham(h, h)
    if mirrors is not None:
        m = np.unpackbits(mirrors, axis=1).astype(np.float32)
        has = np.ones(len(h), bool) if has_mirror is None else has_mirror
        big = np.float32(10 * HASH_BITS)
        hm = np.where(has[None, :], ham(h, m), big)  # a's hash, b's mirror
        mh = np.where(has[:, None], ham(m, h), big)  # a's mirror, b's hash
        d = np.minimum(d, np.minimum(hm, mh))
    return d.astype(np.int64)


def expected(ids: np.ndarray, d: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """Pairs of a distance matrix within the threshold, as binary_pairs returns them."""
    i, j = np.triu_indices(len(ids), 1)
    keep = d[i, j] <= threshold
    a, b = ids[i[keep]], ids[j[keep]]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((hi, lo))
    return lo[order], hi[order], d[i, j][keep][order]


def assert_same(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    assert len(got[0]) == len(want[0])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def planted_set() -> tuple[np.ndarray, ...]:
    """Above the size where "auto" builds tables, so every method meets the index."""
    ids, hashes, mirrors, has_mirror = planted(SMALL + 400)
    return ids, hashes, mirrors, has_mirror, brute_distances(hashes, mirrors, has_mirror)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_binary_pairs_equal_brute_force(
    planted_set: tuple[np.ndarray, ...], threshold: int
) -> None:
    ids, hashes, mirrors, has_mirror, d = planted_set
    want = expected(ids, d, threshold)
    assert threshold < 16 or len(want[0]) > 20  # the planted groups are found
    for method in ("auto", "index", "brute"):
        got = binary_pairs(ids, hashes, threshold, mirrors, has_mirror, method=method)
        assert_same(got, want)
        assert got[0].dtype == np.int64 and got[2].dtype == np.int32


@pytest.mark.parametrize("threshold", [0, 16, 64, 128])
def test_small_sets_pair_in_numpy_as_brute_force(threshold: int) -> None:
    """Up to NUMPY_MAX hashes "auto" compares in NumPy (no kernel to compile first)."""
    from index_actors.duplicates import NUMPY_MAX

    ids, hashes, mirrors, has_mirror = planted(600, seed=3)
    want = expected(ids, brute_distances(hashes, mirrors, has_mirror), threshold)
    assert NUMPY_MAX >= 600 and (threshold < 16 or len(want[0]) > 5)
    assert_same(binary_pairs(ids, hashes, threshold, mirrors, has_mirror), want)
    no_mirrors = expected(ids, brute_distances(hashes, None, None), threshold)
    assert_same(binary_pairs(ids, hashes, threshold), no_mirrors)


@pytest.mark.parametrize("threshold", [0, 32, 64])
def test_binary_pairs_without_mirrors(threshold: int) -> None:
    ids, hashes, _, _ = planted(SMALL + 100, seed=1)
    want = expected(ids, brute_distances(hashes, None, None), threshold)
    for method in ("index", "brute"):
        assert_same(binary_pairs(ids, hashes, threshold, method=method), want)


def test_skewed_bits_fall_back_to_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half the bits the same in every hash (as similar photos' low frequencies are) make
    the tables' buckets huge: "auto" counts the candidates, finds all pairs cheaper and
    compares them; the forced index stays exact."""
    rng = np.random.default_rng(2)
    n = SMALL + 200
    bits = np.zeros((n, HASH_BITS), bool)
    bits[:, ::2] = rng.random(HASH_BITS // 2) < 0.5  # every other bit fixed
    bits[:, 1::2] = rng.random((n, HASH_BITS // 2)) < 0.5
    bits[n // 2 :] = bits[: n - n // 2]  # and copies, 10 bits off
    bits[n // 2 :, rng.choice(HASH_BITS, 10, replace=False)] ^= True
    hashes = np.packbits(bits, axis=1)
    ids = np.arange(n, dtype=np.int64)
    want = expected(ids, brute_distances(hashes, None, None), 64)
    assert len(want[0]) >= n // 2
    assert plan_for(n, 64, mirrored=False) is not None  # random bits would take the index
    brute_calls = []
    brute = duplicates.brute_pairs
    monkeypatch.setattr(duplicates, "brute_pairs", lambda *a: brute_calls.append(1) or brute(*a))
    assert_same(binary_pairs(ids, hashes, 64), want)
    assert brute_calls
    brute_calls.clear()
    assert_same(binary_pairs(ids, hashes, 64, method="index"), want)
    assert not brute_calls


def test_binary_pairs_is_deterministic_and_row_order_free(
    planted_set: tuple[np.ndarray, ...],
) -> None:
    ids, hashes, mirrors, has_mirror, _ = planted_set
    first = binary_pairs(ids, hashes, 64, mirrors, has_mirror)
    assert_same(binary_pairs(ids, hashes, 64, mirrors, has_mirror), first)
    shuffle = np.random.default_rng(3).permutation(len(ids))
    assert_same(
        binary_pairs(ids[shuffle], hashes[shuffle], 64, mirrors[shuffle], has_mirror[shuffle]),
        first,
    )


@pytest.mark.parametrize("n", [0, 1, 2, 10, 10_000, 1_000_000])
def test_plans_are_exact_by_the_pigeonhole(n: int) -> None:
    """Every plan: disjoint chunks of real bit positions whose flips add up past the
    threshold, so a pair within it agrees to ``flips`` bits in some chunk."""
    for threshold in range(MAX_BINARY_THRESHOLD + 1):
        plan = plan_for(n, threshold, force=True)
        assert plan is not None
        bits = [p for chunk in plan.chunks for p in chunk]
        assert len(bits) == len(set(bits)) and all(0 <= p < HASH_BITS for p in bits)
        assert all(chunk for chunk in plan.chunks)
        assert len(plan.chunks) * (plan.flips + 1) > threshold
        assert max(plan.lengths) <= 24


def test_plans_leave_brute_force_where_it_is_cheaper() -> None:
    assert plan_for(100_000, 64) is not None  # the hard case: the index by far
    assert plan_for(100_000, 128) is None  # a fifth of the bits: no filter helps


# --- real photos ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_hashes() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, hashes and mirrored hashes of the test photos and of three copies: one
    mirrored, one at half size, one both."""
    paths = sorted((Path(__file__).parent / "photos").glob("*.jpg"))
    data = {p.stem: p.read_bytes() for p in paths}
    first, second, third = sorted(data)[:3]
    data[f"{first}-mirror"] = reencode(data[first], mirror=True)
    data[f"{second}-half"] = reencode(data[second], scale=0.5)
    data[f"{third}-half-mirror"] = reencode(data[third], scale=0.5, mirror=True)
    phash = PHash()
    variants = np.stack(phash.query_variants([phash.decode(d) for d in data.values()]))
    return list(data), variants[:, 0], variants[:, 1]


def test_copies_of_real_photos_pair_with_their_originals(
    photo_hashes: tuple[list[str], np.ndarray, np.ndarray],
) -> None:
    names, hashes, mirrors = photo_hashes
    ids = np.arange(len(names), dtype=np.int64)
    a, b, dist = binary_pairs(ids, hashes, 32, mirrors)
    found = {(names[x], names[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)}
    want = {(n.rsplit("-", 1)[0].removesuffix("-half"), n) for n in names if "-" in n}
    assert found == want  # and unrelated photos do not pair
    assert (dist <= 32).all()
    # Without the mirrors, the mirrored copies are far from their originals.
    a, b, _ = binary_pairs(ids, hashes, 32)
    assert {(names[x], names[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)} == {
        pair for pair in want if not pair[1].endswith("mirror")
    }
    # Older rows without a stored mirror: a pair still counts through the other's mirror.
    only_copies = np.array(["-" in n for n in names])
    a, _, _ = binary_pairs(ids, hashes, 32, mirrors, only_copies)
    assert len(a) == len(want)


# --- vectors --------------------------------------------------------------------------------
def brute_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    v = vectors.astype(np.float64)
    if metric == "ip":
        return 1.0 - v @ v.T
    diff = v[:, None, :] - v[None, :, :]
    return np.abs(diff).sum(2) if metric == "l1" else (diff * diff).sum(2)


@pytest.mark.parametrize("metric", ["l2", "ip", "l1"])
def test_vector_pairs_equal_brute_force(metric: str) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[100:150] = vectors[:50] + rng.normal(scale=0.05, size=(50, 16))
    if metric == "ip":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(1000)[:300].astype(np.int64)
    d = brute_vectors(vectors, metric)
    threshold = float(np.quantile(d[np.triu_indices(300, 1)], 0.002))
    a, b, dist = vector_pairs(ids, vectors, threshold, metric)
    want = expected(ids, d, threshold)
    assert len(want[0]) >= 50
    np.testing.assert_array_equal(a, want[0])
    np.testing.assert_array_equal(b, want[1])
    np.testing.assert_allclose(dist, want[2], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("metric", "other"),
    [("l2", [1.0, 0.0]), ("l1", [0.5, 0.5]), ("ip", [0.0, 1.0])],
)
def test_vector_threshold_is_inclusive(metric: str, other: list[float]) -> None:
    """Distance exactly 1 in every metric's unit (squared L2, L1, 1 - dot)."""
    base = [1.0, 0.0] if metric == "ip" else [0.0, 0.0]
    vectors = np.array([base, other], np.float32)
    ids = np.array([7, 3])
    a, b, dist = vector_pairs(ids, vectors, 1.0, metric)
    assert (a.tolist(), b.tolist(), dist.tolist()) == ([3], [7], [1.0])
    assert len(vector_pairs(ids, vectors, 0.999, metric)[0]) == 0


def test_binary_threshold_is_inclusive() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (1, 72), dtype=np.uint8)
    hashes = np.concatenate([base, flipped(rng, base[0], 20)[None]])
    for method in ("index", "brute"):
        assert binary_pairs(np.array([1, 2]), hashes, 20, method=method)[2].tolist() == [20]
        assert len(binary_pairs(np.array([1, 2]), hashes, 19, method=method)[0]) == 0


# --- groups ---------------------------------------------------------------------------------
def test_groups_are_components_largest_first() -> None:
    a = np.array([50, 1, 2, 9, 40, 30])
    b = np.array([60, 2, 3, 8, 20, 10])
    dist = np.array([4, 1, 2, 3, 5, 6])
    assert groups(a, b, dist) == [
        Group([1, 2, 3], [(1, 2, 1), (2, 3, 2)]),
        Group([8, 9], [(8, 9, 3)]),  # a pair given as (9, 8) is stored a < b
        Group([10, 30], [(10, 30, 6)]),  # ties of size: by smallest member
        Group([20, 40], [(20, 40, 5)]),
        Group([50, 60], [(50, 60, 4)]),
    ]
    assert groups(np.array([], np.int64), np.array([], np.int64), np.array([])) == []


def test_groups_of_found_pairs(planted_set: tuple[np.ndarray, ...]) -> None:
    ids, hashes, mirrors, has_mirror, _ = planted_set
    a, b, dist = binary_pairs(ids, hashes, 64, mirrors, has_mirror)
    found = groups(a, b, dist)
    assert sum(len(g.pairs) for g in found) == len(a)
    members = [i for g in found for i in g.ids]
    assert len(members) == len(set(members)) == len(set(a) | set(b))
    assert [len(g.ids) for g in found] == sorted((len(g.ids) for g in found), reverse=True)
    for g in found:
        assert g.ids == sorted(g.ids)
        assert all(x in g.ids and y in g.ids and x < y for x, y, _ in g.pairs)


# --- bad input ------------------------------------------------------------------------------
HASHES = np.zeros((3, 72), np.uint8)
IDS = np.array([1, 2, 3])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: binary_pairs(IDS, HASHES, -1), "threshold must be from 0 to 128"),
        (lambda: binary_pairs(IDS, HASHES, 129), "threshold must be from 0 to 128"),
        (lambda: binary_pairs(IDS, HASHES, 1.5), "whole number of bits"),  # type: ignore[arg-type]
        (lambda: binary_pairs(IDS, HASHES, True), "whole number of bits"),
        (lambda: binary_pairs(IDS, HASHES[:, :64], 8), r"shape \(n, 72\)"),
        (lambda: binary_pairs(IDS, HASHES.astype(np.int64), 8), "must be uint8"),
        (lambda: binary_pairs(IDS[:2], HASHES, 8), r"ids must have shape \(3,\)"),
        (lambda: binary_pairs(np.array([1, 1, 2]), HASHES, 8), "ids must be distinct"),
        (lambda: binary_pairs(IDS, HASHES, 8, HASHES[:2]), "mirrors must be uint8 of shape"),
        (lambda: binary_pairs(IDS, HASHES, 8, None, np.ones(3, bool)), "has_mirror needs"),
        (lambda: binary_pairs(IDS, HASHES, 8, HASHES, np.ones(2, bool)), "has_mirror must"),
        (lambda: binary_pairs(IDS, HASHES, 8, method="fast"), "method must be"),
        (lambda: vector_pairs(IDS, np.zeros((3, 4)), 1.0, "cosine"), "unknown metric"),
        (lambda: vector_pairs(IDS, np.zeros(3), 1.0, "l2"), "must be 2-D"),
        (lambda: vector_pairs(IDS[:2], np.zeros((3, 4)), 1.0, "l2"), "ids must have shape"),
        (lambda: vector_pairs(IDS, np.zeros((3, 4)), float("nan"), "l2"), "finite"),
        (lambda: groups(IDS, IDS[:2], IDS), "one length"),
    ],
)
def test_bad_input_is_a_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
