"""Index classes and stores without Ray: search semantics, replace, delete, persistence."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from deployments.fusion import fuse
from index_actors.binary import BinaryIndex
from index_actors.interface import UnknownImage
from index_actors.store import Catalog
from index_actors.vector import VectorIndex


def _hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 72), dtype=np.uint8)


def _flip(h: np.ndarray, bits: int) -> np.ndarray:
    out = np.unpackbits(h.copy())
    out[:bits] ^= 1
    return np.packbits(out)


def test_binary_knn_threshold_and_variants(tmp_path: Path) -> None:
    idx = BinaryIndex(tmp_path, 576)
    h = _hashes(50)
    idx.add(list(range(100, 150)), h)
    assert idx.count == 50
    q = _flip(h[7], 10)
    assert idx.search(q, k=1) == [(107, 10.0)]
    # Threshold is inclusive and returns every id within it.
    assert idx.search(q, k=None, threshold=10) == [(107, 10.0)]
    assert idx.search(q, k=None, threshold=9) == []
    # Two variants: each id keeps its best distance.
    hits = idx.search(np.stack([_flip(h[3], 5), _flip(h[3], 2)]), k=1)
    assert hits == [(103, 2.0)]
    assert [i for i, _ in idx.search_by_id(107, k=3)] != [] and 107 not in dict(
        idx.search_by_id(107, k=3)
    )
    with pytest.raises(UnknownImage):
        idx.search_by_id(999, k=3)


def test_readd_replaces_and_remove_deletes(tmp_path: Path) -> None:
    idx = BinaryIndex(tmp_path, 576)
    h = _hashes(3)
    idx.add([1, 2, 3], h)
    idx.add([2], h[0][None, :])  # id 2 now holds the first hash
    assert idx.count == 3
    assert sorted(i for i, d in idx.search(h[0], k=3) if d == 0) == [1, 2]
    assert idx.remove([2, 42]) == [2]
    assert idx.count == 2 and idx.has([1, 2, 3]) == [1, 3]
    assert 2 not in dict(idx.search(h[0], k=3))


def test_bad_shapes_and_duplicate_ids_are_refused(tmp_path: Path) -> None:
    idx = BinaryIndex(tmp_path, 576)
    with pytest.raises(ValueError, match="expected hashes of 72 bytes"):
        idx.add([1], np.zeros((1, 10), np.uint8))
    with pytest.raises(ValueError, match="duplicate"):
        idx.add([1, 1], _hashes(2))
    assert idx.count == 0 and idx.store.count() == 0


def test_snapshot_is_loaded_when_current_and_rebuilt_when_stale(tmp_path: Path) -> None:
    idx = BinaryIndex(tmp_path, 576)
    h = _hashes(20)
    idx.add(list(range(20)), h)
    assert idx.snapshot() and not idx.snapshot()  # second call: nothing changed
    idx.add([99], _hashes(1, seed=5))  # acknowledged after the snapshot
    idx.store.close()  # a crash: no final snapshot

    reopened = BinaryIndex(tmp_path, 576)
    assert reopened.count == 21  # stale snapshot -> rebuilt from LMDB
    assert reopened.search(_hashes(1, seed=5)[0], k=1) == [(99, 0.0)]
    reopened.close()
    again = BinaryIndex(tmp_path, 576)
    assert again.count == 21 and again._snapshot_generation == again.store.generation


def test_binary_values_may_carry_a_mirrored_hash(tmp_path: Path) -> None:
    """phash stores the mirrored hash behind the hash: only the first is indexed and
    searched; a store from before (hashes alone) takes both kinds and rebuilds from them."""
    idx = BinaryIndex(tmp_path, 576)
    old, new, mirrored = _hashes(2), _hashes(2, seed=1), _hashes(2, seed=2)
    idx.add([1, 2], old)  # from before mirrored hashes
    idx.add([3, 4], np.hstack([new, mirrored]))
    assert idx.search(mirrored[0], k=1)[0][0] != 3  # the mirrored hash is not searched
    assert idx.search(new[0], k=1) == [(3, 0.0)]
    assert idx.query_of(3).tobytes() == new[0].tobytes() and idx.get(3).size == 144
    idx.store.close()  # no snapshot: a rebuild from values of both widths
    reopened = BinaryIndex(tmp_path, 576)
    assert reopened.count == 4 and reopened.search(old[1], k=1) == [(2, 0.0)]
    assert reopened.search(new[1], k=1) == [(4, 0.0)]
    with pytest.raises(ValueError, match="72 bytes"):
        reopened.add([5], np.zeros((1, 100), np.uint8))
    reopened.close()


def test_damaged_snapshot_means_rebuild(tmp_path: Path) -> None:
    idx = BinaryIndex(tmp_path, 576)
    idx.add([1, 2], _hashes(2))
    idx.close()
    (tmp_path / "index.faiss").write_bytes(b"garbage")
    assert BinaryIndex(tmp_path, 576).count == 2


@pytest.mark.parametrize("metric", ["l1", "l2", "ip"])
def test_vector_index_metrics(tmp_path: Path, metric: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((40, 16), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(tmp_path, 16, metric=metric)
    idx.add(list(range(40)), x)
    hits = idx.search(x[5], k=3)
    assert hits[0][0] == 5 and hits[0][1] == pytest.approx(0.0, abs=1e-5)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(hits))
    within = idx.search(x[5], k=None, threshold=hits[1][1])
    assert [i for i, _ in within] == [i for i, _ in hits[:2]]


def test_vector_index_rebuilds_after_restart(tmp_path: Path) -> None:
    x = np.random.default_rng(2).random((10, 512), dtype=np.float32)
    idx = VectorIndex(tmp_path, 512, metric="l1")
    idx.add(list(range(10)), x)
    idx.store.close()
    assert VectorIndex(tmp_path, 512, metric="l1").search(x[4], k=1)[0][0] == 4


def test_catalog_ids_names_and_moves(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    assert cat.register("a.jpg") == (1, "a.jpg")
    assert cat.register("b.jpg") == (2, "b.jpg")
    assert cat.register("a.jpg") == (1, "a.jpg")  # same name -> same id
    assert cat.register(None, 10) == (10, "10")
    assert cat.register("c.jpg") == (11, "c.jpg")
    assert cat.register("renamed.jpg", 1) == (1, "renamed.jpg")
    assert cat.register(None, 1) == (1, "renamed.jpg")  # no name given: it keeps its name
    assert cat.id_of("a.jpg") is None and cat.id_of("renamed.jpg") == 1
    with pytest.raises(ValueError, match="belongs to image 2"):
        cat.register("b.jpg", 5)
    assert cat.name_of([1, 2, 99]) == {1: "renamed.jpg", 2: "b.jpg"}
    assert cat.unregister(2) and not cat.unregister(2)
    assert cat.id_of("b.jpg") is None and cat.count() == 3


def test_catalog_never_reuses_ids(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    assert cat.register("x.jpg") == (1, "x.jpg")
    assert cat.register("y.jpg") == (2, "y.jpg")
    cat.unregister(2)
    assert cat.register("z.jpg") == (3, "z.jpg")
    cat.close()
    assert Catalog(tmp_path).register("w.jpg") == (4, "w.jpg")


def test_catalog_label_names_never_merge_images(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    assert cat.register("image.jpg", unique_name=True) == (1, "image.jpg")
    assert cat.register("image.jpg", unique_name=True) == (2, "image.jpg#2")
    assert cat.register("image.jpg") == (1, "image.jpg")  # as an identity, it is image 1


def test_catalog_refuses_names_lmdb_cannot_key(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    with pytest.raises(ValueError, match="500 bytes"):
        cat.register("x" * 600 + ".jpg")
    assert cat.count() == 0


def test_catalog_batch_is_all_or_nothing(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.register("x.jpg", 1)
    with pytest.raises(ValueError):
        cat.register_many([("y.jpg", 2), ("x.jpg", 3)])
    assert cat.count() == 1 and cat.id_of("y.jpg") is None


def test_fusion_ranks_duplicates_first_and_weights_sources() -> None:
    lists = {
        "phash": [(1, 200.0), (2, 30.0), (3, 250.0)],
        "color": [(1, 5.0), (3, 6.0), (2, 9.0)],
    }
    fused = fuse(lists, {"phash": 1.0, "color": 1.0}, 60, "phash", 64)
    assert [f.image_id for f in fused] == [2, 1, 3]
    assert fused[0].duplicate and fused[0].matches["phash"] == {"rank": 2, "distance": 30.0}
    no_dup = fuse(lists, {"phash": 1.0, "color": 3.0}, 60, "phash", None)
    assert [f.image_id for f in no_dup] == [1, 3, 2]
    assert no_dup[0].score == pytest.approx(1 / 61 + 3 / 61)
