"""Local features (issue 4, first step, no Ray): keypoint selection, RootSIFT, the keypoint
index with its descriptor-id ranges, and finding crops and the classic pairs."""

import io
import logging
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image, ImageOps

from extractors import WeightsUnavailable
from extractors.base import FUSED
from extractors.keypoint_pack import keypoint_count
from extractors.local import LocalFeatures, mirrored_descriptors, pack, unpack
from index_actors.keypoints import KeypointIndex
from index_actors.ranges import RangeMap
from scripts.train_index import train
from tests.helpers import encode, reencode

PAIRS = Path(__file__).resolve().parent / "photos" / "pairs"


@pytest.fixture(scope="module")
def local() -> LocalFeatures:
    return LocalFeatures()


def _crop(data: bytes, area: float, mirror: bool = False) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = area**0.5
    crop = img.crop((int(w * 0.2), int(h * 0.2), int(w * (0.2 + s)), int(h * (0.2 + s))))
    return encode(ImageOps.mirror(crop) if mirror else crop, "JPEG", quality=90)


def test_selection_follows_the_seed_rules(local: LocalFeatures, photos: dict[str, bytes]) -> None:
    for data in list(photos.values())[:4]:
        (feat,) = local.extract_bytes([data])
        points, desc = unpack(feat)
        assert 0 < len(points) <= 200 and desc.shape == (len(points), 128)
        assert desc.dtype == np.uint8 and desc.max() > 0
        w, h = Image.open(io.BytesIO(data)).size
        quadrant = (points[:, 0] >= w / 2).astype(int) + 2 * (points[:, 1] >= h / 2)
        assert np.bincount(quadrant, minlength=4).max() <= 50
    flat = encode(Image.new("L", (300, 200), 128), "PNG")
    (feat,) = local.extract_bytes([flat])
    assert len(unpack(feat)[0]) == 0  # no keypoints is a result, not an error


def test_pack_round_trip_and_padded_variants(
    local: LocalFeatures, photos: dict[str, bytes]
) -> None:
    pts = np.array([[1.5, 2.5], [3, 4]], np.float32)
    desc = np.arange(256, dtype=np.uint8).reshape(2, 128)
    got = unpack(np.pad(pack(pts, desc), (0, 40)))
    assert np.array_equal(got[0], pts) and np.array_equal(got[1], desc)
    (variants,) = local.extract_bytes([next(iter(photos.values()))], query=True)
    assert variants.ndim == 2 and len(variants) == 2  # the image and its mirror
    (alone,) = LocalFeatures(mirror=False).extract_bytes([next(iter(photos.values()))], query=True)
    assert np.array_equal(alone, variants[:1, : alone.shape[1]])


def test_range_map_lookup() -> None:
    ranges = RangeMap()
    ranges.load([(7, 0, 3), (9, 3, 2), (4, 10, 0)])
    ranges.add(5, 20, 4)
    ids = np.array([0, 2, 3, 4, 5, 19, 20, 23, 24, -1])
    assert ranges.lookup(ids).tolist() == [7, 7, 9, 9, -1, -1, 5, 5, -1, -1]
    ranges.remove(3)
    assert ranges.lookup(np.array([3, 4])).tolist() == [-1, -1] and ranges.descriptors == 7


@pytest.fixture(scope="module")
def stored(
    local: LocalFeatures, photos: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> tuple[KeypointIndex, list[str]]:
    names = sorted(photos)
    blobs = [photos[n] for n in names]
    names += ["graf1.jpg", "box_in_scene.png"]
    blobs += [(PAIRS / "graf1.jpg").read_bytes(), (PAIRS / "box_in_scene.png").read_bytes()]
    idx = KeypointIndex(tmp_path_factory.mktemp("local"))
    idx.add(list(range(len(blobs))), local.extract_bytes(blobs))
    return idx, names


def _top(idx: KeypointIndex, local: LocalFeatures, data: bytes, names: list[str]) -> str | None:
    (query,) = local.extract_bytes([data], query=True)
    hits = idx.search(query, k=1)
    return names[hits[0][0]] if hits else None


@pytest.mark.parametrize(
    ("query", "want"), [("graf3.jpg", "graf1.jpg"), ("box.png", "box_in_scene.png")]
)
def test_the_classic_pairs_are_found(
    stored: tuple[KeypointIndex, list[str]], local: LocalFeatures, query: str, want: str
) -> None:
    idx, names = stored
    assert _top(idx, local, (PAIRS / query).read_bytes(), names) == want


@pytest.mark.parametrize(("area", "mirror"), [(0.5, False), (0.25, False), (0.5, True)])
def test_crops_find_their_photo(
    stored: tuple[KeypointIndex, list[str]],
    local: LocalFeatures,
    photos: dict[str, bytes],
    area: float,
    mirror: bool,
) -> None:
    idx, names = stored
    name = "Bridge_by_Sander_Klootwijk.jpg"
    assert _top(idx, local, _crop(photos[name], area, mirror), names) == name


def test_replace_remove_and_reopen(
    local: LocalFeatures, photos: dict[str, bytes], tmp_path: Path
) -> None:
    blobs = list(photos.values())
    feats = local.extract_bytes(blobs)
    idx = KeypointIndex(tmp_path)
    idx.add(list(range(len(blobs))), feats)
    total = idx.index.ntotal
    idx.add([0], [feats[1]])  # image 0 now holds image 1's features
    assert idx.count == len(blobs) and idx.index.ntotal == idx.ranges.descriptors
    (query,) = local.extract_bytes([_crop(blobs[1], 0.5)], query=True)
    assert {i for i, _ in idx.search(query, k=2)} == {0, 1}
    assert idx.remove([0, 99]) == [0]
    assert idx.search(query, k=1)[0][0] == 1
    idx.close()
    again = KeypointIndex(tmp_path)  # from the snapshot
    assert again.count == len(blobs) - 1 and again.index.ntotal == again.ranges.descriptors
    assert again.index.ntotal < total and again.search(query, k=1)[0][0] == 1
    again.store.close()  # no snapshot: the next open rebuilds from LMDB
    (tmp_path / "index.stamp").unlink()
    rebuilt = KeypointIndex(tmp_path)  # from LMDB
    assert rebuilt.index.ntotal == again.index.ntotal
    assert rebuilt.search(query, k=1)[0][0] == 1


def _random_features(n: int, seed: int) -> list[np.ndarray]:
    """Packed features of random descriptors (cheap stand-ins where only ids matter)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 60))
        pts = rng.uniform(0, 500, (k, 2)).astype(np.float32)
        out.append(pack(pts, rng.integers(0, 256, (k, 128), dtype=np.uint8)))
    return out


def test_trained_descriptor_index(
    local: LocalFeatures, photos: dict[str, bytes], tmp_path: Path
) -> None:
    blobs = [*photos.values(), (PAIRS / "graf1.jpg").read_bytes()]
    idx = KeypointIndex(tmp_path, nprobe=4)
    idx.add(list(range(len(blobs))), local.extract_bytes(blobs))
    sample = idx.sample(100_000)
    assert sample.shape == (idx.index.ntotal, 128) and sample.dtype == np.float32
    trained, _ = train(sample, "l2", "IVF16,PQ16", None)
    assert idx.adopt(trained) == {"count": len(blobs), "trained": True, "descriptors": len(sample)}
    graf = len(blobs) - 1
    # The vote threshold is widened by the PQ codes' mean squared error (0 when exact).
    assert idx._slack > 100
    (query,) = local.extract_bytes([(PAIRS / "graf3.jpg").read_bytes()], query=True)
    assert idx.search(query, k=1)[0][0] == graf
    (crop,) = local.extract_bytes([_crop(blobs[0], 0.25)], query=True)
    assert idx.search(crop, k=1)[0][0] == 0
    # nprobe is live and kept; the trained index comes back from its snapshot.
    idx.configure(nprobe=16)
    idx.close()
    again = KeypointIndex(tmp_path)
    assert again.trained and again.live == {"nprobe": 16}
    assert faiss.extract_index_ivf(again.index).nprobe == 16
    assert again.index.ntotal == len(sample) and again.search(query, k=1)[0][0] == graf
    # Back to the exact index; a whitening or an index that cannot serve is refused.
    assert again._slack == idx._slack  # measured again on start
    assert again.adopt(None)["trained"] is False and not (tmp_path / "trained.npz").exists()
    assert again._slack == 0
    with pytest.raises(ValueError, match="no whitening"):
        again.adopt(None, b"x")
    for factory, metric, why in [
        ("HNSW8", "l2", "cannot take ids"),
        ("IVF4,Flat", "ip", "L2"),
    ]:
        blob, _ = train(sample, metric, factory, None)
        with pytest.raises(ValueError, match=why):
            again.adopt(blob)
    small, _ = train(sample[:, :64], "l2", "IVF4,Flat", None)
    with pytest.raises(ValueError, match="128-d"):
        again.adopt(small)
    assert again.search(query, k=1)[0][0] == graf


def test_writes_during_a_keypoint_index_switch_are_not_lost(tmp_path: Path) -> None:
    feats = _random_features(3000, seed=0)
    idx = KeypointIndex(tmp_path)
    idx.add(list(range(len(feats))), feats)
    trained, _ = train(idx.sample(20_000), "l2", "IVF16,Flat", None)
    extra = _random_features(300, seed=1)
    replacements = _random_features(300, seed=2)

    def write() -> None:
        for i, feat in enumerate(extra):
            idx.add([10_000 + i], [feat])
            if i % 3 == 0:
                idx.remove([i])
            if i % 3 == 1:
                idx.add([i], [replacements[i]])  # replaced: new descriptor ids

    writer = threading.Thread(target=write)
    writer.start()
    idx.adopt(trained)
    writer.join()
    # Every stored image has exactly its current descriptors in the new index.
    assert idx.trained and idx.index.ntotal == idx.ranges.descriptors
    for image_id in (1, 2, 4, 10_000, 10_150, 10_299):
        _, desc = unpack(idx.get(image_id))
        if len(desc):
            _, labels = idx.index.search(desc[:1].astype(np.float32), 1)
            assert idx.ranges.lookup(labels[0]).tolist() == [image_id]
    assert idx.has([0, 3, 297]) == []


def test_hardnet8_descriptors(photos: dict[str, bytes], tmp_path: Path) -> None:
    import torch
    from kornia.feature import HardNet8

    with pytest.raises(ValueError, match="unknown descriptor"):
        LocalFeatures(descriptor="orb")
    with pytest.raises(WeightsUnavailable, match=r"fetch_models\.py local"):
        LocalFeatures(descriptor="hardnet8").load()  # nothing cached, and offline
    torch.save({"conv.weight": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsUnavailable, match="not a HardNet8 checkpoint"):
        LocalFeatures(descriptor="hardnet8", weights=str(tmp_path / "foreign.pt")).load()
    # The real network and patch path, with random (seeded) weights.
    torch.manual_seed(0)
    torch.save(HardNet8(pretrained=False).state_dict(), tmp_path / "hardnet8.pt")
    hardnet = LocalFeatures(descriptor="hardnet8", weights=str(tmp_path / "hardnet8.pt"))
    hardnet.load()
    blobs = list(photos.values())[:4]
    feats = hardnet.extract_bytes(blobs)
    rootsift = LocalFeatures().extract_bytes(blobs[:1])[0]
    points, desc = unpack(feats[0])
    assert np.array_equal(points, unpack(rootsift)[0])  # the same keypoints
    assert desc.shape == (len(points), 128) and len(np.unique(desc, axis=0)) == len(desc)
    idx = KeypointIndex(tmp_path / "index")
    idx.add(list(range(len(feats))), feats)
    (query,) = hardnet.extract_bytes([blobs[2]], query=True)
    assert idx.search(query, k=1)[0][0] == 2


def test_mutual_matching_is_kornias_match_smnn() -> None:
    """The index actor's NumPy mutual nearest-neighbour matching (no torch in that process)
    pairs exactly what kornia's ``match_smnn`` pairs, near copies and strangers mixed."""
    import torch
    from kornia.feature import match_smnn

    from index_actors.keypoint_match import mutual_matches

    rng = np.random.default_rng(0)
    for _ in range(50):
        n, m = (int(v) for v in rng.integers(2, 200, 2))
        a = rng.integers(0, 256, (n, 128)).astype(np.uint8)
        near = (a[: m // 2] + rng.integers(0, 3, (min(m // 2, n), 128))).astype(np.uint8)
        b = np.concatenate([near, rng.integers(0, 256, (m - len(near), 128)).astype(np.uint8)])
        threshold = float(rng.uniform(0.6, 0.99))
        _, want = match_smnn(
            torch.from_numpy(a.astype(np.float32)),
            torch.from_numpy(b.astype(np.float32)),
            threshold,
        )
        got = mutual_matches(a, b, threshold)
        assert np.array_equal(got, want.numpy().reshape(-1, 2)), threshold
        assert len(got) or not len(near)


def test_a_query_is_read_at_a_bounded_size(
    stored: tuple[KeypointIndex, list[str]], photos: dict[str, bytes]
) -> None:
    """``query_max_area`` bounds the query (here to a quarter of a 640 x 360 test photo,
    about what the default 800 x 600 is of a 1600-px photo): its keypoints lie within the
    smaller image, stored images keep their size, and the photo, a large crop and its
    mirror image are still found first."""
    idx, names = stored
    name = "Bridge_by_Sander_Klootwijk.jpg"
    bounded = LocalFeatures(query_max_area=320 * 180)
    (query,) = bounded.extract_bytes([photos[name]], query=True)
    for row in query:
        points, _ = unpack(row)
        assert len(points) > 50 and points[:, 0].max() < 320 and points[:, 1].max() < 180
    (kept,) = bounded.extract_bytes([photos[name]])
    assert unpack(kept)[0][:, 0].max() > 320  # stored: the whole 640 px
    for data in (photos[name], _crop(photos[name], 0.8), reencode(photos[name], mirror=True)):
        assert _top(idx, bounded, data, names) == name

    # A fused search's query has a bound of its own; a plain query keeps the whole image,
    # and a query within the bound is the same in both modes.
    fused = LocalFeatures(fused_query_max_area=320 * 180)
    (whole,) = fused.extract_bytes([photos[name]], query=True)
    (glance,) = fused.extract_bytes([photos[name]], query=FUSED)
    assert unpack(whole[0])[0][:, 0].max() > 320
    assert np.array_equal(whole, LocalFeatures().extract_bytes([photos[name]], query=True)[0])
    assert unpack(glance[0])[0][:, 0].max() < 320 and len(unpack(glance[0])[0]) > 50
    small = _crop(photos[name], 0.2)
    assert np.array_equal(*(fused.extract_bytes([small], query=q)[0] for q in (True, FUSED)))


def _verified(points: np.ndarray, desc: np.ndarray, stored: np.ndarray) -> int:
    """Inliers of a query variant's matches with a stored feature, as a search counts them."""
    from index_actors.keypoint_match import inliers, mutual_matches

    their_points, their_desc = unpack(stored)
    m = mutual_matches(desc, their_desc, 0.85)
    return inliers(points[m[:, 0]], their_points[m[:, 1]])


def test_a_query_is_detected_and_described_in_one_pass(
    local: LocalFeatures, photos: dict[str, bytes]
) -> None:
    """A query's keypoints come from one SIFT pass over its strongest extrema: the image's
    variant chooses the keypoints ``features`` chooses from all of them, and the mirror
    variant (the same extrema mirrored, their descriptors' bins mirrored) verifies about as
    many matches with a mirrored copy as a second SIFT pass over the mirrored pixels."""
    assert np.array_equal(mirrored_descriptors(mirrored_descriptors(np.eye(128))), np.eye(128))
    for name in sorted(photos)[:4]:
        gray = np.asarray(Image.open(io.BytesIO(photos[name])).convert("L"))
        (points, desc), (m_points, m_desc) = local.query_features(gray)
        want = local.features(gray)
        assert len(points) == len(want[0]) == 200
        assert (np.abs(points[:, None] - want[0][None]).max(-1) < 0.01).any(1).all(), name
        (stored,) = local.extract_bytes([reencode(photos[name], quality=80)])
        assert _verified(points, desc, stored) >= 0.9 * _verified(*want, stored) > 0, name
        (copy,) = local.extract_bytes([reencode(photos[name], quality=80, mirror=True)])
        second = local.features(np.ascontiguousarray(gray[:, ::-1]))  # a second pass
        assert _verified(m_points, m_desc, copy) >= 0.8 * _verified(*second, copy) > 0, name
        # Most mirrored keypoints are where the second pass found one.
        near = np.abs(m_points[:, None, :] - second[0][None, :, :]).max(-1).min(1) < 0.1
        assert near.mean() > 0.5, name


def test_variants_searched_together_answer_as_each_alone(
    stored: tuple[KeypointIndex, list[str]], local: LocalFeatures, photos: dict[str, bytes]
) -> None:
    """One search of both variants (their descriptors in one FAISS call, the candidates
    verified on threads) keeps, per image, the best of each variant searched alone."""
    idx, _ = stored
    for data in (photos["Wine_by_Jakkub_Mede.jpg"], _crop(photos["Dragonfly_by_Bolly.jpg"], 0.3)):
        (query,) = local.extract_bytes([data], query=True)
        for opts in ({}, {"use_smnn_matching": False}, {"use_ransac": False, "candidates": 5}):
            best: dict[int, float] = {}
            for row in query:
                for image_id, distance in idx.search(row[None, :], k=None, **opts):
                    best[image_id] = min(best.get(image_id, 1.0), distance)
            want = sorted(best.items(), key=lambda h: (h[1], h[0]))
            assert idx.search(query, k=None, **opts) == want
    # The verifier threads run NumPy's BLAS on one thread each (its own threads on top of
    # them made each mutual matching 20-100x slower on 2 cores).
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["prefix"] == "libscipy_openblas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)


def test_the_index_trains_itself_once_it_holds_train_at_descriptors(
    local: LocalFeatures,
    photos: dict[str, bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``train_at`` descriptors the index stays exact; the add that crosses it starts
    a background training of ``train_factory``, whose index is adopted (kept on disk) with
    every image still found by a crop. A factory FAISS cannot build leaves it exact."""
    names = sorted(photos)
    feats = local.extract_bytes([photos[n] for n in names])
    half = len(names) // 2
    at = sum(keypoint_count(f) for f in feats[:half]) + 1
    idx = KeypointIndex(tmp_path / "auto", train_at=at, train_factory="IVF8,Flat")
    idx.add(list(range(half)), feats[:half])
    assert idx.training is None and not idx.trained
    assert not idx.describe()["training"]
    # Held at its sample until the description has been read: "training" while it trains.
    gate, sample = threading.Event(), idx.sample
    monkeypatch.setattr(idx, "sample", lambda n, seed=0: (gate.wait(60), sample(n, seed))[1])
    idx.add(list(range(half, len(names))), feats[half:])
    assert idx.training is not None
    assert idx.describe()["training"] and not idx.describe()["trained"]
    gate.set()
    idx.training.join(120)
    assert idx.trained and idx.describe()["trained"] and not idx.describe()["training"]
    for name in names:
        assert _top(idx, local, _crop(photos[name], 0.5), names) == name, name
    idx.close()
    again = KeypointIndex(tmp_path / "auto", train_at=at, train_factory="IVF8,Flat")
    assert again.trained and again.count == len(names)
    again.close()

    broken = KeypointIndex(tmp_path / "broken", train_at=at, train_factory="IVF8,NoSuch")
    with caplog.at_level(logging.ERROR):
        broken.add(list(range(len(names))), feats)
        assert broken.training is not None
        broken.training.join(120)
    assert not broken.trained and "NoSuch" in caplog.text
    assert _top(broken, local, photos[names[0]], names) == names[0]
    broken.close()
