"""Extractors run together (extractors/group.py, deployments.ports.build_group) without Ray:
tags ride on the global network (one model, one forward pass) and answer what a tagger of
the same input answers alone; a feature known to lack weights is never built."""

from collections.abc import Iterator

import numpy as np
import pytest

from deployments.ports import build_group
from extractors import GlobalFeatures, ImageNetTagger, InvalidImage, WeightsUnavailable
from extractors.base import FUSED, Query
from extractors.group import run, share_networks
from extractors.local import LocalFeatures
from extractors.textdoc import decode_doc

OPTIONS = {"global": {"threads": 1}, "tags": {"threads": 1}, "phash": {}}


@pytest.fixture(scope="module")
def group() -> Iterator[tuple[dict, dict]]:
    ports, riders = build_group(["phash", "global", "tags"], OPTIONS, {})
    yield {n: p.extractor for n, p in ports.items()}, riders


def test_tags_ride_on_the_global_network(group: tuple[dict, dict]) -> None:
    extractors, riders = group
    assert riders == {"tags": "global"}
    assert extractors["tags"].model is extractors["global"].model  # one model in memory
    other = ImageNetTagger(model="mobilenetv3_small_100")  # another network: its own
    assert share_networks({"global": GlobalFeatures(), "tags": other}) == {}


def test_one_pass_gives_both_as_each_alone(
    group: tuple[dict, dict], photos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    extractors, riders = group
    blobs = list(photos.values())[:4]
    passes = []
    forward = GlobalFeatures.forward

    def counted(self: GlobalFeatures, images: list) -> tuple:
        passes.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(GlobalFeatures, "forward", counted)
    requests = [(b, False, f) for b in blobs for f in ("phash", "global", "tags")]
    requests.append((b"not an image", False, "tags"))
    requests.append((b"not an image", False, "global"))
    out = run(extractors, riders, requests)
    assert passes == [len(blobs)]  # one forward pass for both features of every upload
    assert isinstance(out[-1], InvalidImage) and isinstance(out[-2], InvalidImage)
    monkeypatch.undo()

    # The same vectors as global alone, the same tags as a tagger of global's input alone.
    alone = GlobalFeatures(threads=1).extract_bytes(blobs)
    tagger = ImageNetTagger(threads=1, crop_pct=1.0).extract_bytes(blobs)
    for j in range(len(blobs)):
        vector, doc = out[3 * j + 1], out[3 * j + 2]
        assert np.allclose(vector, alone[j], atol=1e-5)
        assert [t["label"] for t in decode_doc(doc)["tags"]] == [
            t["label"] for t in decode_doc(tagger[j])["tags"]
        ]
    # A search asks one feature alone: the rider then runs the shared network by itself.
    (query,) = run(extractors, riders, [(blobs[0], False, "tags")])
    assert decode_doc(query) == decode_doc(out[2])


def test_a_feature_known_to_lack_weights_is_never_built() -> None:
    ports, riders = build_group(
        ["phash", "clip"], {"clip": {}}, {"clip": "clip: no weights (fetch them)"}
    )
    assert ports["clip"].extractor is None and riders == {}
    with pytest.raises(WeightsUnavailable, match="no weights"):
        ports["clip"].ready()
    assert ports["phash"].ready().name == "phash"


def test_a_batch_of_mixed_modes_answers_each_in_its_own(photos: dict[str, bytes]) -> None:
    """One batch may hold stored features, queries and fused queries of one upload: each
    gets its own (a fused query of local features at their fused bound)."""
    local = LocalFeatures(fused_query_max_area=160 * 90)
    data = next(iter(photos.values()))
    modes: list[Query] = [FUSED, False, True, FUSED]
    out = run({"local": local}, {}, [(data, mode, "local") for mode in modes])
    for mode, got in zip(modes, out, strict=True):
        assert np.array_equal(got, local.extract_bytes([data], mode)[0]), mode
    assert not np.array_equal(out[0], out[2])


def test_library_threads_one_for_stored_images_all_for_a_lone_query(
    photos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cv2's and torch's pools are per process: a batch of stored images runs them on one
    thread (an ingest fills the cores with batches side by side), a query batch on their
    configured threads, beside other queries too (a fused search's reach one process
    together), and on one beside a batch of stored images."""
    import threading

    import cv2
    import torch

    from extractors import group as extractor_group
    from extractors.phash import PHash

    seen: list[tuple[int, int]] = []
    started, release = threading.Event(), threading.Event()

    class Recording(PHash):
        def extract_bytes(self, blobs: list[bytes], query: Query = False) -> list:
            seen.append((cv2.getNumThreads(), torch.get_num_threads()))
            if blobs[0] == b"wait":
                started.set()
                release.wait(30)
                return [InvalidImage("waited")]
            return super().extract_bytes(blobs, query)

    before = (cv2.getNumThreads(), torch.get_num_threads())
    monkeypatch.setattr(extractor_group, "library_threads", extractor_group.LibraryThreads())
    cv2.setNumThreads(2)
    torch.set_num_threads(2)  # as configured: what the first batch finds
    try:
        extractors, blob = {"phash": Recording()}, next(iter(photos.values()))
        run(extractors, {}, [(blob, False, "phash")])
        run(extractors, {}, [(blob, True, "phash"), (blob, FUSED, "phash")])
        run(extractors, {}, [(blob, True, "phash"), (blob, False, "phash")])
        assert seen == [(1, 1), (2, 2), (2, 2), (1, 1), (1, 1)]

        def beside(running: bool) -> None:
            """A query batch while a batch (``running``: of queries; else stored) runs."""
            seen.clear()
            started.clear()
            release.clear()
            first = threading.Thread(
                target=run, args=(extractors, {}, [(b"wait", running, "phash")])
            )
            first.start()
            assert started.wait(30)
            run(extractors, {}, [(blob, True, "phash")])
            release.set()
            first.join(30)

        beside(running=True)  # queries beside queries: every thread
        assert seen == [(2, 2), (2, 2)]
        beside(running=False)  # a query beside stored images: one
        assert seen == [(1, 1), (1, 1)]
        run(extractors, {}, [(blob, True, "phash")])  # alone again: every thread
        assert seen[-1] == (2, 2)
    finally:
        release.set()
        cv2.setNumThreads(before[0])
        torch.set_num_threads(before[1])


def test_heap_trim_waits_until_no_batch_runs() -> None:
    """The replica's heap trim (``IdleTrim``) never runs inside or beside a batch: two
    overlapping batches get one trim, after the second ends."""
    import threading
    import time

    from deployments.extractor import IdleTrim

    calls: list[float] = []
    trimmed = threading.Event()
    trim = IdleTrim(lambda: (calls.append(time.monotonic()), trimmed.set()))
    with trim.batch():
        with trim.batch():
            pass
        assert not trimmed.wait(0.3)  # the first batch ended; the second still runs
        ended = time.monotonic()
    assert trimmed.wait(10)
    assert len(calls) == 1 and calls[0] >= ended
