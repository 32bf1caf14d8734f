"""Vector indexes beyond Flat (no Ray): trained IVF-PQ, PCA-whitening, query expansion."""

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_actors.vector import VectorIndex
from scripts.train_index import train


def _embeddings(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors with structure (a few latent factors), as real embeddings have."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) @ rng.normal(size=(8, dim)) + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(hits: list[tuple[int, float]]) -> set[int]:
    return {i for i, _ in hits}


@pytest.fixture
def filled(tmp_path: Path) -> tuple[VectorIndex, np.ndarray]:
    x = _embeddings(4000)
    idx = VectorIndex(tmp_path, 64, metric="ip")
    idx.add(list(range(len(x))), x)
    return idx, x


def test_trained_ivfpq_with_rerank_keeps_recall(filled: tuple[VectorIndex, np.ndarray]) -> None:
    idx, x = filled
    exact = [_ids(idx.search(q, k=10)) for q in x[:30]]
    trained, _ = train(idx.sample(4000), "ip", "IVF32,PQ16x4", None)
    assert idx.adopt(trained, None) == {"count": 4000, "trained": True, "width": 64}
    idx.configure(nprobe=8, rerank=100)
    approx = [_ids(idx.search(q, k=10)) for q in x[:30]]
    recall = np.mean([len(a & b) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9
    # Fewer candidates to re-rank: PQ's own order shows; recall drops (the setting is live).
    idx.configure(rerank=10)
    rough = [_ids(idx.search(q, k=10)) for q in x[:30]]
    assert np.mean([len(a & b) / 10 for a, b in zip(exact, rough, strict=True)]) < recall
    # Distances are exact (re-ranked from the stored vectors) and thresholds work on them.
    (best,) = idx.search(x[5], k=1)
    assert best[0] == 5 and best[1] < 1e-5
    assert 5 in _ids(idx.search(x[5], k=None, threshold=0.01))


def test_writes_during_adopt_are_not_lost(filled: tuple[VectorIndex, np.ndarray]) -> None:
    idx, x = filled
    extra = _embeddings(300, seed=1)
    trained, _ = train(idx.sample(4000), "ip", "IVF16,Flat", None)
    idx.rebuild_chunk = 256  # many chunks: the writer thread gets in between them
    stop = threading.Event()

    def write() -> None:
        for i, vec in enumerate(extra):
            idx.add([10_000 + i], vec)
            if i % 3 == 0:
                idx.remove([i])
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    idx.adopt(trained, None)
    writer.join()
    assert stop.is_set() and idx.trained
    assert idx.count == idx.store.count() == 4000 + 300 - 100
    for i in (0, 3, 297):
        assert idx.search(x[i], k=1)[0][0] != i
    for i in (0, 150, 299):
        assert idx.search(extra[i], k=1)[0][0] == 10_000 + i


def test_whitening_keeps_raw_vectors_and_survives_restart(tmp_path: Path) -> None:
    x = _embeddings(1000)
    idx = VectorIndex(tmp_path, 64, metric="ip")
    idx.add(list(range(1000)), x)
    _, white = train(idx.sample(1000), "ip", None, 16)
    assert idx.adopt(None, white)["width"] == 16
    assert np.array_equal(idx.get(7), x[7])  # stored raw
    assert idx.search(x[7], k=1)[0][0] == 7
    idx.add([5000], x[7])
    idx.close()
    again = VectorIndex(tmp_path, 64, metric="ip")
    assert again.whitening is not None and again.whitening.d_out == 16 and not again.trained
    assert again.count == 1001 and _ids(again.search(x[7], k=2)) == {7, 5000}
    # And back to plain Flat on raw vectors.
    again.adopt(None, None)
    assert again.index.d == 64 and not (tmp_path / "whitening.faiss").exists()


def test_query_expansion(filled: tuple[VectorIndex, np.ndarray]) -> None:
    idx, x = filled
    plain = idx.search(x[3], k=10)
    expanded = idx.search(x[3], k=10, aqe_n=5, aqe_alpha=3.0)
    assert expanded[0][0] == 3 and plain != expanded
    # The live default applies when a search does not say.
    idx.configure(aqe_n=5, aqe_alpha=3.0)
    assert idx.search(x[3], k=10) == expanded
    assert idx.search_by_id(3, k=9, aqe_n=0) == plain[1:]


def test_bad_training_inputs(filled: tuple[VectorIndex, np.ndarray], tmp_path: Path) -> None:
    idx, x = filled
    wrong = faiss.serialize_index(faiss.IndexFlatIP(32)).tobytes()
    with pytest.raises(ValueError, match="need an empty trained 64-d index"):
        idx.adopt(wrong, None)
    with pytest.raises(ValueError, match="cannot build"):
        train(x, "ip", "IVF,Nonsense", None)
    with pytest.raises(ValueError, match="more than"):
        train(x[:10], "ip", None, 32)
    with pytest.raises(ValueError, match="not live settings"):
        idx.configure(metric="l2")
    l1 = VectorIndex(tmp_path / "l1", 64, metric="l1")
    l1.add([1, 2], x[:2])
    with pytest.raises(ValueError, match="inner-product"):
        l1.search(x[0], k=1, aqe_n=2)


def test_threshold_search_on_a_trained_index_is_exact(
    filled: tuple[VectorIndex, np.ndarray],
) -> None:
    idx, x = filled
    flat = {q: _ids(idx.search(x[q], k=None, threshold=0.3)) for q in range(10)}
    trained, _ = train(idx.sample(4000), "ip", "PCAR16,IVF16,PQ8", None)
    idx.adopt(trained, None)
    idx.configure(nprobe=16, rerank=400)
    for q, want in flat.items():
        assert len(want) < 400  # within what the re-ranking looks at
        assert _ids(idx.search(x[q], k=None, threshold=0.3)) == want


def test_index_types_that_cannot_serve_are_refused(
    filled: tuple[VectorIndex, np.ndarray],
) -> None:
    idx, x = filled
    hnsw, _ = train(x, "ip", "HNSW16", None)
    with pytest.raises(ValueError, match="cannot remove"):
        idx.adopt(hnsw, None)
    l2, _ = train(x, "l2", "IVF8,Flat", None)
    with pytest.raises(ValueError, match="metric"):
        idx.adopt(l2, None)
    # One switch at a time: a second one while the first fills would lose its writes.
    idx._changed = set()
    with pytest.raises(ValueError, match="another index switch"):
        idx.adopt(None, None)
    idx._changed = None
    assert not idx.trained and idx.count == 4000


def test_a_snapshot_of_the_old_index_is_not_loaded_with_new_artefacts(tmp_path: Path) -> None:
    """What a snapshot written during adopt() would leave: the old index, a current stamp."""
    x = _embeddings(1000)
    idx = VectorIndex(tmp_path, 64, metric="ip")
    idx.add(list(range(1000)), x)
    assert idx.snapshot()
    old = {f: (tmp_path / f).read_bytes() for f in ("index.faiss", "index.stamp")}
    trained, white = train(idx.sample(1000), "ip", "IVF8,Flat", 16)
    idx.adopt(trained, white)
    idx.close()
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    again = VectorIndex(tmp_path, 64, metric="ip")
    assert again.trained and again.index.d == 16 and again.count == 1000
    assert again.search(x[3], k=1)[0][0] == 3


def test_live_settings_survive_a_restart(filled: tuple[VectorIndex, np.ndarray]) -> None:
    idx, _ = filled
    idx.configure(nprobe=5, aqe_n=2)
    idx.close()
    again = VectorIndex(idx.path, 64, metric="ip")  # as Ray re-creates a crashed actor
    assert (again.live["nprobe"], again.live["aqe_n"]) == (5, 2)


def test_a_store_of_another_width_is_refused(filled: tuple[VectorIndex, np.ndarray]) -> None:
    idx, _ = filled
    idx.close()
    with pytest.raises(ValueError, match="was the model changed"):
        VectorIndex(idx.path, 32, metric="ip")
