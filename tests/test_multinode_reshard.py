"""Resharding on the multi-node cluster (tests/test_multinode.py's, a cluster of this
module's own: it deploys an app of its own, which the golden app's module must not meet).

Run apart (``pytest -m own_ray``): the cluster is this process's Ray session."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml

from index_actors import shards
from tests.conftest import RunningApp, deploy, kill_actors
from tests.test_multinode import Cluster, _layout, _nodes_of, _shard_actors, cluster

pytestmark = [pytest.mark.own_ray, pytest.mark.timeout(900)]
__all__ = ["cluster"]  # the fixture, used by name


def _features(app: RunningApp, feature: str, count: int) -> dict[int, bytes]:
    """Every stored feature of one feature's shards: id -> bytes."""
    out: dict[int, bytes] = {}
    for i, actor in enumerate(_shard_actors(app, feature, count)):
        ids, rows = ray.get(actor.export.remote(-1, 10**6))
        assert all(shards.owner(image_id, count) == i for image_id in ids)
        out.update({image_id: bytes(row) for image_id, row in zip(ids, rows, strict=True)})
    return out


def test_resharding_1_3_2_on_the_cluster(
    cluster: Cluster, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """An app stopped, resharded by the command over the cluster's nodes, started again:
    every image with identical features, the new shards on the data nodes."""
    from ray import serve

    from scripts.reshard import main

    name = f"r{uuid.uuid4().hex[:8]}"
    features = {"phash": {}, "color": {}, "local": {}, "ocr": {}}
    settings: dict[str, Any] = {"features": features}
    app = deploy(name, tmp_path, cluster.port, **settings, shards=1)
    with httpx.Client(base_url=app.url, timeout=120) as client:
        for file_name, body in photos.items():
            r = client.post("/images", files={"image": (file_name, body)})
            assert r.status_code == 200, r.text
    assert _layout(app, "phash").nodes == ["alpha"]
    before = {f: _features(app, f, 1) for f in features}
    assert all(len(rows) == len(photos) for rows in before.values())
    config = tmp_path / "serve.yaml"
    for count in (3, 2):
        serve.delete("test")
        args = {"name": name, "data_dir": str(tmp_path), **settings, "shards": count}
        apps = [{"name": name, "args": args}]
        config.write_text(yaml.safe_dump({"applications": apps}))
        assert main([f"--config={config}", f"--app={name}"]) == 0
        app = deploy(name, tmp_path, cluster.port, **settings, shards=count)
        nodes = cluster.node_ids()
        for feature in features:
            layout = _layout(app, feature)
            assert layout.nodes == ["alpha", "beta", "alpha"][:count]
            where = _nodes_of(_shard_actors(app, feature, count))
            assert where == [nodes[n] for n in layout.nodes]
            assert _features(app, feature, count) == before[feature], (count, feature)
        health = httpx.get(f"{app.url}/health", timeout=60).json()
        assert health["status"] == "ok" and health["images"] == len(photos)
    serve.delete("test")
    kill_actors(name)
