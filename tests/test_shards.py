"""Sharded indexes without Ray: ownership by id, writes to the owner, and searches over every
shard merged into what one unsharded index answers, for every kind (data without ties at
the k-th distance, nor keypoint votes crowded out: docs/architecture.md#shards)."""

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extractors import build_extractor
from extractors.textdoc import encode_doc
from index_actors import shards
from index_actors.actor import IndexActor, LocalActor
from index_actors.client import IndexClient, IndexSpec
from index_actors.placement import spread
from tests.helpers import reencode


def run(coro: Any) -> Any:
    """One client call on a fresh event loop."""
    return asyncio.run(coro)


def test_owner_is_stable_even_and_moves_little() -> None:
    ids = list(range(1, 20_001))
    assert [shards.owner(i, 4) for i in (1, 2, 3, 1000, 2**62)] == [
        shards.owner(i, 4) for i in (1, 2, 3, 1000, 2**62)
    ]
    assert all(shards.owner(i, 1) == 0 for i in ids[:100])
    counts = Counter(shards.owner(i, 4) for i in ids)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) < 1.05 * len(ids) / 4
    # Jump hashing: from 3 to 4 shards only the images the new shard takes move.
    moved = [i for i in ids if shards.owner(i, 3) != shards.owner(i, 4)]
    assert all(shards.owner(i, 4) == 3 for i in moved)
    assert 0.2 < len(moved) / len(ids) < 0.3
    groups = shards.by_owner([5, 6, 7, 8], 2)
    assert sorted(p for pos in groups.values() for p in pos) == [0, 1, 2, 3]


def _pair(tmp: Path, feature: str, spec: IndexSpec, n: int) -> tuple[IndexClient, IndexClient]:
    """One unsharded client and one over ``n`` shards, on their own folders."""
    one = IndexClient.local(tmp / "one", {feature: spec})
    many = IndexClient.local(
        tmp / "many", {feature: IndexSpec(spec.kind, spec.dim, spec.options, n)}
    )
    return one, many


def _store_both(pair: tuple[IndexClient, IndexClient], feature: str, rows: list[Any]) -> None:
    for client in pair:
        images: list[tuple[str | None, int | None]] = [
            (f"img{i}", 100 + i) for i in range(len(rows))
        ]
        done = run(client.store(images, {feature: rows}))
        assert all(s.ok for s in done)


def _same_answers(
    pair: tuple[IndexClient, IndexClient], feature: str, queries: list[Any], **options: Any
) -> None:
    one, many = pair
    for query in queries:
        for k, threshold in ((5, None), (50, None)):
            want = run(one.search(feature, query, k, threshold, **options))
            assert want, "the query must find something"
            assert run(many.search(feature, query, k, threshold, **options)) == want
    for image_id in (100, 103, 107):
        want = run(one.search_by_id(feature, image_id, 5, None))
        assert run(many.search_by_id(feature, image_id, 5, None)) == want


def test_a_sharded_description_sums_counts_and_trains_while_any_shard_does() -> None:
    """Shards train themselves each on its own (``train_at``): the index is training while
    any of them is; a shard that failed leaves no count but its error."""
    one = {"count": 3, "nprobe": 16, "trained": False, "training": False}
    two = {"count": 4, "nprobe": 16, "trained": False, "training": True}
    both = shards.combined([one, two])
    assert both["count"] == 7 and both["training"] and both["shards"] == [one, two]
    assert not shards.combined([one, {**two, "training": False}])["training"]
    broken = shards.combined([one, RuntimeError("down")])
    assert "count" not in broken and "shard 1/2" in broken["error"]


def test_binary_and_vector_shards_merge_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hashes = list(rng.integers(0, 256, (60, 72), dtype=np.uint8))
    pair = _pair(tmp_path / "phash", "phash", IndexSpec("binary", 576), 3)
    _store_both(pair, "phash", hashes)
    _same_answers(pair, "phash", [hashes[3], hashes[40] ^ 1])
    one, many = pair
    assert run(many.search("phash", hashes[3], None, 300)) == run(
        one.search("phash", hashes[3], None, 300)
    )

    vectors = rng.normal(size=(60, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    spec = IndexSpec("vector", 16, {"metric": "ip"})
    pair = _pair(tmp_path / "vec", "global", spec, 4)
    _store_both(pair, "global", list(vectors))
    _same_answers(pair, "global", [vectors[5], vectors[9] + 0.1])
    # Each shard holds only what it owns, and the counts add up.
    described, _ = run(pair[1].describe())
    assert described["global"]["count"] == 60 and len(described["global"]["shards"]) == 4
    for s, actor in enumerate(pair[1].shards["global"]):
        stored = actor._obj.index.store  # type: ignore[attr-defined]
        assert all(shards.owner(i, 4) == s for i, _ in stored.items())


def test_duplicates_and_thumbnails_over_shards(tmp_path: Path) -> None:
    """The duplicate finder reads every shard: over 3 shards it groups as over one (phash
    with mirrored hashes: planted copies, one only by its mirrored hash); blobs (thumbnails)
    are stored with, and read from, their owner."""
    from deployments.duplicates import DuplicateFinder

    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 256, (40, 72), dtype=np.uint8)
    mirrors = rng.integers(0, 256, (40, 72), dtype=np.uint8)
    hashes[7], hashes[21] = hashes[3], hashes[3]  # copies of image 103, one a bit off
    hashes[7, 0] ^= 1
    hashes[30] = mirrors[12]  # 130 is 112 mirrored
    rows = list(np.hstack([hashes, mirrors]))
    pair = _pair(tmp_path / "phash", "phash", IndexSpec("binary", 576), 3)
    _store_both(pair, "phash", rows)
    one, many = (run(DuplicateFinder(c).groups("phash", 10)) for c in pair)
    assert one == many and [g.ids for g in one] == [[103, 107, 121], [112, 130]]
    assert len(run(pair[1].stored("phash"))[0]) == 40

    blobs = IndexClient.local(tmp_path / "blobs", {"thumbnail": IndexSpec("blob", 0, {}, 3)})
    values = [np.frombuffer(f"thumb {i}".encode(), np.uint8) for i in range(12)]
    images: list[tuple[str | None, int | None]] = [(f"img{i}", 100 + i) for i in range(12)]
    assert all(s.ok for s in run(blobs.store(images, {"thumbnail": values})))
    assert run(blobs.docs(["thumbnail"], 105)) == [b"thumb 5"]
    assert sum(a._obj.index.count for a in blobs.shards["thumbnail"]) == 12


def test_query_expansion_over_shards_is_one_index_expansion(tmp_path: Path) -> None:
    """Alpha query expansion with the n nearest of all shards: the answers of one index,
    requested or configured, by a query or by a stored image, whitened or not (distances
    up to float rounding: the expansion's sum is added up in another order)."""
    from scripts.train_index import train

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    spec = IndexSpec("vector", 16, {"metric": "ip", "aqe_n": 3})
    one, many = _pair(tmp_path, "global", spec, 3)
    _store_both((one, many), "global", list(vectors))

    def same(want: list[Any], got: list[Any]) -> None:
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [d for _, d in got] == pytest.approx([d for _, d in want], abs=1e-5)

    for whitened in (False, True):
        if whitened:
            _, whitening = train(vectors, "ip", None, 8)
            for client in (one, many):
                run(client.adopt("global", None, whitening))
        for options in ({"aqe_n": 6, "aqe_alpha": 2.0}, {}, {"aqe_n": 0}):
            for query in (vectors[5], vectors[9] + 0.1):
                want = run(one.search("global", query, 10, None, **options))
                same(want, run(many.search("global", query, 10, None, **options)))
            want = run(one.search_by_id("global", 104, 10, None, **options))
            same(want, run(many.search_by_id("global", 104, 10, None, **options)))
        plain = run(one.search("global", vectors[5], 10, None, aqe_n=0))
        assert run(one.search("global", vectors[5], 10, None, aqe_n=6)) != plain


def test_keypoint_votes_and_verification_merge_exactly(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """Votes are per image, so each shard counts its own: crops of real photos find the same
    images with the same inliers across 3 shards as in one index."""
    local = build_extractor("local")
    names = sorted(photos)
    rows = [r for r in local.extract_bytes([photos[n] for n in names])]
    pair = _pair(tmp_path, "local", IndexSpec("keypoints", local.dim), 3)
    _store_both(pair, "local", rows)
    queries = local.extract_bytes([reencode(photos[n], scale=0.6) for n in names[:3]], True)
    _same_answers(pair, "local", queries)
    seed = {"use_smnn_matching": False, "use_ransac": False, "k_clusters": 10}
    _same_answers(pair, "local", queries, **seed)


def test_text_shards_merge_exactly(tmp_path: Path) -> None:
    words = ["bridge", "river", "sunset", "wine", "glass", "bee", "daisy", "garden", "friends"]
    docs = [
        encode_doc({"text": " ".join(words[(i * j) % len(words)] for j in range(1, 4))})
        for i in range(30)
    ]
    pair = _pair(tmp_path, "ocr", IndexSpec("text", 0), 3)
    _store_both(pair, "ocr", docs)
    _same_answers(pair, "ocr", ["bridge wine", "sunsett", "glass bee daisy"])


def test_writes_and_deletes_go_to_the_owner_and_training_spans_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    client = IndexClient.local(tmp_path, {"color": IndexSpec("vector", 8, {"metric": "l2"}, 3)})
    images: list[tuple[str | None, int | None]] = [(None, i) for i in range(1, 301)]
    assert all(s.ok for s in run(client.store(images, {"color": vectors})))
    assert run(client.has("color", [1, 2, 3, 999])) == [1, 2, 3]
    run(client.delete(2))
    assert run(client.has("color", [1, 2, 3])) == [1, 3]
    assert run(client.names([2])) == {}

    sample = run(client.sample("color", 150))
    assert 140 <= len(sample) <= 160 and sample.shape[1] == 8
    from scripts.train_index import train

    trained, _ = train(sample, "l2", "IVF2,Flat", None)
    adopted = run(client.adopt("color", trained, None))
    assert adopted["count"] == 299 and all(d["trained"] for d in adopted["shards"])
    hits = run(client.search("color", vectors[10], 3, None))
    assert hits[0] == (11, pytest.approx(0.0, abs=1e-4))


def test_a_layout_of_another_shard_count_is_found(tmp_path: Path) -> None:
    """Changing the count must not hide stored images behind empty new shards: the client
    refuses to open such a feature (it is unavailable, with the reason) until resharded."""
    vectors = np.ones((5, 4), np.float32)
    for n in (1, 2):
        client = IndexClient.local(tmp_path, {"color": IndexSpec("vector", 4, {}, n)})
        images: list[tuple[str | None, int | None]] = [(None, i) for i in range(10 * n, 10 * n + 5)]
        run(client.store(images, {"color": vectors}))
        for actor in client.shards["color"]:
            actor._obj.index.close()  # type: ignore[attr-defined]
        client.catalog._obj.close()  # type: ignore[attr-defined]
    assert shards.other_layouts(tmp_path, "color", 1) == {2: 5}
    assert shards.other_layouts(tmp_path, "color", 2) == {1: 5}
    assert shards.other_layouts(tmp_path, "color", 3) == {1: 5, 2: 5}
    assert shards.other_layouts(tmp_path, "phash", 3) == {}


def test_a_shard_that_cannot_write_fails_only_the_adds_it_owns(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """One of 3 shards loses its store: adds it owns answer "retry" and leave nothing
    behind, all others are stored (searches over a shard that is down: test_golden_sharded)."""
    from deployments.config import AppArgs
    from deployments.engine import Engine
    from deployments.ports import LocalExtractor
    from index_actors.interface import BackendDown

    args = AppArgs.model_validate({"name": "unit", "data_dir": str(tmp_path), "shards": 3})
    extractors = {n: LocalExtractor.build(n, args.extractor_options(n)) for n in args.enabled}
    engine = Engine(args, extractors, IndexClient.local(tmp_path, args.index_specs()))
    broken = engine.client.shards["color"][1]._obj.index  # type: ignore[attr-defined]
    broken.store.env.close()
    data = photos[sorted(photos)[0]]
    mine = next(i for i in range(100, 130) if shards.owner(i, 3) == 1)
    other = next(i for i in range(100, 130) if shards.owner(i, 3) != 1)
    with pytest.raises(BackendDown, match="retry"):
        run(engine.add(data, mine, None, engine.indexed))
    assert run(engine.client.names([mine])) == {}
    assert run(engine.client.has("phash", [mine])) == []
    assert run(engine.add(data, other, None, engine.indexed)).image_id == other
    assert run(engine.client.has("color", [other])) == [other]


def test_resharding_1_3_2_keeps_every_image_with_identical_features(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """Every kind, a trained vector index included: after 1 -> 3 -> 2 shards each image is in
    its owner's store with the same feature, the answers are the unsharded ones, and the
    old layouts are moved aside (so the app opens the new one)."""
    from index_actors.kinds import KINDS
    from index_actors.reshard import LocalOpener, reshard
    from index_actors.store import Catalog, FeatureStore
    from scripts.train_index import train

    rng = np.random.default_rng(2)
    local = build_extractor("local")
    names = sorted(photos)
    vectors = rng.normal(size=(len(names) * 5, 8)).astype(np.float32)
    columns: dict[str, tuple[IndexSpec, list[Any]]] = {
        "phash": (IndexSpec("binary", 576), list(rng.integers(0, 256, (len(names), 72), np.uint8))),
        "color": (IndexSpec("vector", 8, {"metric": "l2"}), list(vectors[: len(names)])),
        "local": (
            IndexSpec("keypoints", local.dim),
            local.extract_bytes([photos[n] for n in names]),
        ),
        "ocr": (
            IndexSpec("text", 0),
            [encode_doc({"text": f"word{i} photo"}) for i in range(len(names))],
        ),
    }
    data = tmp_path / "data"
    client = IndexClient.local(data, {f: spec for f, (spec, _) in columns.items()})
    images: list[tuple[str | None, int | None]] = [(n, None) for n in names]
    stored = run(client.store(images, {f: rows for f, (_, rows) in columns.items()}))
    ids = [s.image_id for s in stored]
    trained, _ = train(vectors, "l2", "IVF2,Flat", None)
    run(client.adopt("color", trained, None))
    queries = {f: rows[2] for f, (_, rows) in columns.items()}
    queries["ocr"] = "word3 photo"
    want = {f: run(client.search(f, q, 5)) for f, q in queries.items()}
    for (actor,) in client.shards.values():
        actor._obj.index.close()  # type: ignore[attr-defined]
    client.catalog._obj.close()  # type: ignore[attr-defined]

    for count in (3, 2):
        catalog = LocalActor(Catalog(data / "catalog"))
        for feature, (spec, _) in columns.items():
            opener = LocalOpener(str(data), feature, spec)
            done = run(reshard(catalog, opener, data, feature, spread(count, [])))
            assert done["moved"] == len(names)
            assert shards.other_layouts(data, feature, count) == {}
            assert catalog._obj.layout(feature) == {"shards": count, "nodes": [""] * count}
            for shard in range(count):
                folder = shards.directory(data, feature, shard, count)
                store = FeatureStore(folder / "lmdb")
                for image_id, raw in store.items():
                    assert shards.owner(image_id, count) == shard
                    got = KINDS[spec.kind].stored_feature(bytes(raw))
                    assert np.array_equal(got, columns[feature][1][ids.index(image_id)])
                store.close()
        catalog._obj.close()
        sharded = IndexClient.local(
            data, {f: IndexSpec(s.kind, s.dim, s.options, count) for f, (s, _) in columns.items()}
        )
        for feature, query in queries.items():
            assert run(sharded.search(feature, query, 5)) == want[feature], (count, feature)
        described, _ = run(sharded.describe())
        assert all(d["count"] == len(names) for d in described.values())
        assert all(s["trained"] for s in described["color"]["shards"])
        for actors in sharded.shards.values():
            for actor in actors:
                actor._obj.index.close()  # type: ignore[attr-defined]
        sharded.catalog._obj.close()  # type: ignore[attr-defined]


def test_the_reshard_command_follows_the_config(tmp_path: Path) -> None:
    import yaml

    from scripts.reshard import main

    data = tmp_path / "data"
    client = IndexClient.local(data, {"phash": IndexSpec("binary", 576)})
    hashes = np.random.default_rng(3).integers(0, 256, (40, 72), np.uint8)
    images: list[tuple[str | None, int | None]] = [(None, i) for i in range(1, 41)]
    run(client.store(images, {"phash": hashes}))
    client.shards["phash"][0]._obj.index.close()  # type: ignore[attr-defined]
    client.catalog._obj.close()  # type: ignore[attr-defined]
    config = tmp_path / "serve.yaml"
    args = {"name": "r", "data_dir": str(data), "shards": 3, "features": {"phash": {}}}
    config.write_text(yaml.safe_dump({"applications": [{"name": "r", "args": args}]}))

    assert main([f"--config={config}", "--app=r"]) == 0
    assert shards.other_layouts(data, "phash", 3) == {}
    assert {p.name.split("-")[0] for p in (data / "phash").iterdir()} == {"shards", "retired"}
    assert main([f"--config={config}", "--app=r"]) == 0  # nothing left to move
    assert main([f"--config={config}", "--app=r", "--features=clip"]) == 2


def test_new_layouts_spread_over_the_data_nodes_and_records_are_kept() -> None:
    """Round robin over the data nodes (an image's features on one node); the head without
    data nodes; a recorded layout wins over the nodes up now; another count needs a reshard
    once images exist."""
    from index_actors.placement import ANY, HEAD, Layout, choose

    assert spread(4, ["b", "a"]).nodes == ["a", "b", "a", "b"]
    assert spread(2, []).nodes == [HEAD, HEAD]
    assert spread(2, ["a"], shared=True).nodes == [ANY, ANY]
    recorded = Layout(2, ["a", "b"])
    assert Layout.from_dict(recorded.to_dict()) == recorded
    resuming = Layout(2, ["a", "b"], next=Layout(3, ["a", "b", "a"]))
    assert Layout.from_dict(resuming.to_dict()) == resuming
    fresh = spread(2, ["c"])
    assert choose(2, recorded, {}, 10, fresh) == recorded  # node c joined: no move
    assert choose(2, None, {}, 10, fresh) == fresh  # a newly enabled feature
    assert choose(2, None, {2: 5}, 10, fresh) == Layout(2, [HEAD, HEAD])  # data from before
    assert "reshard" in str(choose(3, recorded, {}, 10, fresh))
    for wanted in (2, 3):  # a reshard under way: not for the app, whatever the count
        assert "scripts/reshard.py (again)" in str(choose(wanted, resuming, {}, 0, fresh))
    retiring = Layout(3, ["a", "b", "a"], retiring=recorded)
    assert choose(3, retiring, {}, 10, fresh) == retiring
    assert "moved aside" in str(choose(2, retiring, {}, 0, fresh))
    assert "shared_data_dir" in str(choose(2, spread(2, [], shared=True), {}, 10, fresh))
    assert choose(3, recorded, {}, 0, spread(3, ["c"])) == spread(3, ["c"])  # nothing stored
    assert "1 shard(s) (7 images)" in str(choose(2, None, {1: 7}, 7, fresh))


def test_an_interrupted_reshard_is_finished_by_running_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that stops halfway is abandoned (a run back to the old count), images are
    deleted, and the copy is made again: nothing it left comes back. Then a copy that stops
    halfway is finished by a rerun, and a run that stopped before moving the old files aside
    is finished before anything else: no image lost, doubled or brought back."""
    from index_actors import reshard as module
    from index_actors.placement import ANY, Layout
    from index_actors.reshard import LocalOpener, reshard
    from index_actors.store import Catalog

    spec = IndexSpec("vector", 4, {"metric": "l2"})
    client = IndexClient.local(tmp_path, {"color": spec})
    vectors = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)
    run(client.store([(None, i) for i in range(1, 51)], {"color": vectors}))
    client.shards["color"][0]._obj.close()  # type: ignore[attr-defined]
    client.catalog._obj.close()  # type: ignore[attr-defined]
    catalog = LocalActor(Catalog(tmp_path / "catalog"))
    opener = LocalOpener(str(tmp_path), "color", spec)
    monkeypatch.setattr(module, "CHUNK", 20)
    shared = spread(3, [], shared=True)  # nodes a second run must keep: ANY, not the head's

    def stop(moved: int) -> None:
        if moved >= 40:
            raise KeyboardInterrupt

    def ids_in(count: int) -> list[int]:
        found: list[int] = []
        for i in range(count):
            actor = IndexActor(
                "vector", str(shards.directory(tmp_path, "color", i, count)), 4, {}, 3600
            )
            found += actor.export(-1, 1000)[0]
            actor.close()
        return sorted(found)

    with pytest.raises(KeyboardInterrupt):
        run(reshard(catalog, opener, tmp_path, "color", shared, stop))
    assert catalog._obj.layout("color")["next"]["nodes"] == [ANY] * 3
    assert ids_in(3) == list(range(1, 41))
    run(reshard(catalog, opener, tmp_path, "color", spread(1, []), None))  # abandoned
    assert catalog._obj.layout("color") == {"shards": 1, "nodes": [""]}
    one = IndexActor("vector", str(tmp_path / "color"), 4, {}, 3600)
    one.remove([3, 4])
    one.close()
    with pytest.raises(KeyboardInterrupt):
        run(reshard(catalog, opener, tmp_path, "color", shared, stop))
    done = run(reshard(catalog, opener, tmp_path, "color", spread(3, []), None))
    assert done["moved"] == 48
    assert catalog._obj.layout("color") == {"shards": 3, "nodes": [ANY] * 3}
    assert ids_in(3) == [i for i in range(1, 51) if i not in (3, 4)]

    # Recorded with the old layout retiring, its files not yet moved aside (a run of 3 -> 2
    # that stopped there), then a run back to 3: it moves them aside first, then copies.
    run(reshard(catalog, opener, tmp_path, "color", spread(2, []), None))
    for old in (tmp_path / "color").glob("retired-3-*"):
        for i in range(3):
            back = shards.directory(tmp_path, "color", i, 3)
            back.parent.mkdir(exist_ok=True)
            (old / str(i)).rename(back)
        old.rmdir()
    stuck = Layout(2, [""] * 2, retiring=Layout(3, [ANY] * 3))
    catalog._obj.set_layout("color", stuck.to_dict())
    assert run(reshard(catalog, opener, tmp_path, "color", spread(3, []), None))["moved"] == 48
    assert catalog._obj.layout("color") == {"shards": 3, "nodes": [""] * 3}
    assert shards.layouts_here(tmp_path, "color") == {3: 48}

    # Shards on data nodes are not reachable without the cluster.
    catalog._obj.set_layout("color", Layout(3, ["alpha", "beta", "alpha"]).to_dict())
    with pytest.raises(ValueError, match="running cluster"):
        run(reshard(catalog, opener, tmp_path, "color", spread(2, []), None))
    catalog._obj.close()  # type: ignore[attr-defined]
