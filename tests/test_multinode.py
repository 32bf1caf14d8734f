"""The app on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
a head without data and two data nodes, ``imgsearch-data=alpha`` and ``=beta``. The data
nodes have no CPUs, so that only index actors (which reserve none) run there and a node that
goes down takes shards with it, not replicas.

Run apart (``pytest -m own_ray``): the cluster is this process's Ray session."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import ray

from index_actors import shards
from index_actors.placement import LABEL, Layout
from tests.conftest import RunningApp, _free_port, deploy, kill_actors
from tests.test_golden import differences, golden_settings, payloads, replay
from tests.test_golden_sharded import _not_comparable

pytestmark = [pytest.mark.own_ray, pytest.mark.timeout(900)]
__all__ = ["payloads"]  # the fixture, used by name

DATA_NODES = ("alpha", "beta")


@dataclass
class Cluster:
    """The running cluster, Serve's HTTP port, and its data nodes by name."""

    cluster: Any
    port: int
    data: dict[str, Any]

    def node_ids(self) -> dict[str, str]:
        """Label value (or "head") -> Ray node id of each alive node."""
        out = {}
        for node in ray.nodes():
            if node["Alive"]:
                out[(node.get("Labels") or {}).get(LABEL, "head")] = node["NodeID"]
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three raylets: the head (4 logical CPUs for the replicas) and two data nodes."""
    from ray import serve
    from ray.cluster_utils import Cluster as RayCluster

    head = {"num_cpus": 4, "include_dashboard": False}
    raylets = RayCluster(initialize_head=True, head_node_args=head)
    data = {name: raylets.add_node(num_cpus=0, labels={LABEL: name}) for name in DATA_NODES}
    ray.init(address=raylets.address, namespace="serve", logging_level="ERROR")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield Cluster(raylets, port, data)
    serve.shutdown()
    ray.shutdown()
    raylets.shutdown()


@pytest.fixture(scope="module")
def golden(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The golden app (every feature but caption and places) over 2 shards."""
    from ray import serve

    name = f"m{uuid.uuid4().hex[:8]}"
    settings = {**golden_settings(tmp_path_factory), "max_upload_mb": 2, "shards": 2}
    app = deploy(name, tmp_path_factory.mktemp(name), cluster.port, **settings, write_timeout_s=5)
    yield app
    serve.delete("test")
    kill_actors(name)


def _layout(app: RunningApp, feature: str) -> Layout:
    raw = ray.get(app.actor("catalog").layout.remote(feature))
    return Layout.from_dict(raw)


def _nodes_of(actors: list[Any]) -> list[str]:
    """The Ray node each actor runs on (from the GCS's actor table)."""
    from ray._private.state import actors as actor_table

    return [actor_table(a._actor_id.hex())["Address"]["NodeID"] for a in actors]


def _shard_actors(app: RunningApp, feature: str, count: int) -> list[Any]:
    return [app.actor(shards.role(feature, i, count)) for i in range(count)]


def test_the_golden_app_on_the_cluster(
    cluster: Cluster, golden: RunningApp, payloads: dict[str, bytes], photos: dict[str, bytes]
) -> None:
    """One story, each part on the state the one before left (the tests run in any order,
    and the recording needs a fresh app): where the shards are, the recorded answers, then
    a data node removed during an ingest and back."""
    _shards_land_on_the_data_nodes_and_the_catalog_on_the_head(cluster, golden)
    _merged_answers_equal_the_unsharded_recording(golden, payloads)
    _a_data_node_removed_during_an_ingest_then_back(cluster, golden, photos)


def _shards_land_on_the_data_nodes_and_the_catalog_on_the_head(
    cluster: Cluster, golden: RunningApp
) -> None:
    nodes = cluster.node_ids()
    assert _nodes_of([golden.actor("catalog")]) == [nodes["head"]]
    for feature in ("phash", "color", "global", "clip", "local", "tags", "ocr"):
        layout = _layout(golden, feature)
        assert layout.nodes == ["alpha", "beta"], feature  # an image's features on one node
        where = _nodes_of(_shard_actors(golden, feature, 2))
        assert where == [nodes["alpha"], nodes["beta"]], feature


def _merged_answers_equal_the_unsharded_recording(
    golden: RunningApp, payloads: dict[str, bytes]
) -> None:
    differ = differences(replay(golden, payloads), skip=_not_comparable)
    assert not differ, f"{len(differ)} answers differ:\n" + "\n".join(differ)


class _Stream:
    """Adds images one after another (new ids from ``first``) until stopped, recording each
    answer: an ingest that runs while a node goes down."""

    def __init__(self, url: str, bodies: list[bytes], first: int) -> None:
        self.url, self.bodies, self.next = url, bodies, first
        self.answers: list[tuple[int, int, str, float]] = []  # id, status, detail, time
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                image_id = self.next
                self.next += 1
                body = self.bodies[image_id % len(self.bodies)]
                r = client.post(
                    "/images", files={"image": ("s.jpg", body)}, data={"image_id": image_id}
                )
                self.answers.append((image_id, r.status_code, r.text, time.monotonic()))

    def wait_for(self, done: Any, limit_s: float = 300) -> None:
        """Until ``done(answers)`` holds."""
        deadline = time.monotonic() + limit_s
        while not done(self.answers):
            assert time.monotonic() < deadline, self.answers
            assert self.thread.is_alive()
            time.sleep(0.5)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(300)


def _a_data_node_removed_during_an_ingest_then_back(
    cluster: Cluster, golden: RunningApp, photos: dict[str, bytes]
) -> None:
    """beta goes down while images stream in: searches answer from alpha and name beta's
    shards under ``partial``, /health names them, adds and deletes of images beta owns
    answer 503 "retry", the others 200; beta comes back with every acknowledged image."""
    stream = _Stream(golden.url, list(photos.values()), first=7000)
    stream.wait_for(lambda got: sum(s == 200 for _, s, _, _ in got) >= 4)
    assert all(s == 200 for _, s, _, _ in stream.answers), stream.answers
    cluster.cluster.remove_node(cluster.data["beta"])
    down = time.monotonic()

    def after(got: list[Any], owner: int) -> int:
        return sum(1 for i, _, _, t in got if t > down + 1 and shards.owner(i, 2) == owner)

    stream.wait_for(lambda got: after(got, 0) >= 2 and after(got, 1) >= 2)
    missing = {f: [shards.role(f, 1, 2)] for f in ("phash", "color", "global", "clip", "local")}
    with httpx.Client(base_url=golden.url, timeout=120) as client:
        query = {"image": ("q.jpg", photos[sorted(photos)[0]])}
        r = client.post("/search/image", files=query, data={"k": 50})
        assert r.status_code == 200, r.text
        assert r.json()["partial"] == missing
        assert all(shards.owner(h["image_id"], 2) == 0 for h in r.json()["results"])
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert "index:phash:1/2" in health["indexes"]["phash"]["error"]
        acked = [i for i, s, _, _ in stream.answers if s == 200]
        beta_own = next(i for i in acked if shards.owner(i, 2) == 1)
        alpha_own = next(i for i in reversed(acked) if shards.owner(i, 2) == 0)
        r = client.delete(f"/images/{beta_own}")
        assert r.status_code == 503 and "retry" in r.json()["detail"], r.text
        assert client.delete(f"/images/{alpha_own}").status_code == 200
    stream.finish()
    for image_id, status, detail, t in stream.answers:
        if t > down + 6:  # the write timeout after beta left: every answer is settled
            want = 200 if shards.owner(image_id, 2) == 0 else 503
            assert status == want, (image_id, detail)
            if status == 503:
                assert "retry" in detail

    cluster.data["beta"] = cluster.cluster.add_node(num_cpus=0, labels={LABEL: "beta"})
    nodes = cluster.node_ids()
    with httpx.Client(base_url=golden.url, timeout=120) as client:
        deadline = time.monotonic() + 180
        while client.get("/health").json()["status"] != "ok":
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(1)
        where = _nodes_of(_shard_actors(golden, "phash", 2))
        assert where == [nodes["alpha"], nodes["beta"]]
        assert client.delete(f"/images/{beta_own}").status_code == 200  # the retry
        acked = {i for i, s, _, _ in stream.answers if s == 200} - {beta_own, alpha_own}
        for image_id in sorted(acked):
            r = client.get(f"/images/{image_id}")
            assert r.status_code == 200, (image_id, r.text)
            assert len(r.json()["features"]) == 7, r.json()
        refused = {i for i, s, _, _ in stream.answers if s == 503}
        for image_id in sorted(refused):
            assert client.get(f"/images/{image_id}").status_code == 404
        r = client.post("/search/image", files=query, data={"k": 1000, "features": "phash"})
        found = {h["image_id"] for h in r.json()["results"]}
        assert acked <= found and "partial" not in r.json()
