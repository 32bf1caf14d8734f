"""``configs/serve.yaml`` deployed whole, as ``make serve`` runs it: only the data directory,
the actor names and the snapshot interval are the test's. Its ``deployments:`` block is
thereby loaded and checked by Serve (a deployment it names that the app lacks, or a misspelt
option, fails the deploy), and its autoscaling is seen to act under load."""

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from tests.conftest import SERVE_YAML, RunningApp, deploy, kill_actors, running_replicas
from tests.helpers import reencode

#: The shipped features a fresh machine runs: no weights needed, or weights in a package.
READY = {"phash", "color", "global", "local", "tags", "ocr", "thumbnail"}
#: Model features whose weights this machine lacks (``HOME`` is a test folder).
NO_WEIGHTS = {"clip", "caption"}


@pytest.fixture(scope="module")
def shipped(ray_session: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The shipped config with every feature it ships."""
    from ray import serve

    name = f"c{uuid.uuid4().hex[:8]}"
    running = deploy(name, tmp_path_factory.mktemp(name), ray_session, features=None)
    yield running
    serve.delete("test")
    kill_actors(name)


def test_every_deployment_the_config_names_runs_with_its_options(shipped: RunningApp) -> None:
    from ray import serve
    from ray.serve._private.api import serve_start

    app = yaml.safe_load(SERVE_YAML.read_text())["applications"][0]
    named = {d["name"] for d in app["deployments"]}
    running = set(serve.status().applications["test"].deployments)
    assert named <= running, f"serve.yaml names deployments the app lacks: {named - running}"
    health = httpx.get(f"{shipped.url}/health", timeout=60).json()
    ext = health["extractors"]
    assert {f for f, e in ext.items() if e["available"]} == READY, ext
    assert {f for f, e in ext.items() if not e["available"]} == NO_WEIGHTS, ext
    assert all("fetch_models.py" in ext[f]["reason"] for f in NO_WEIGHTS), ext
    # Nor an index actor: nothing is stored for them yet. Text search names them.
    assert all("fetch_models.py" in health["indexes"][f]["error"] for f in NO_WEIGHTS), health
    found = httpx.get(f"{shipped.url}/search/text", params={"q": "bridge"}, timeout=60)
    assert found.status_code == 200 and set(found.json()["unavailable"]) == NO_WEIGHTS, found.text
    # No replica for a model without weights (min_replicas 0; the ingress answers for it,
    # /health included), one for each of the others.
    assert running_replicas("extract_clip") == running_replicas("extract_caption") == 0
    assert running_replicas("extract_global") >= 1 and running_replicas("extract_cpu") >= 1
    # Each deployment runs with the options the file gives it (what the dashboard shows),
    # not the code's defaults.
    details = serve_start().get_serve_details()["applications"]["test"]["deployments"]
    for entry in app["deployments"]:
        running_config = details[entry["name"]]["deployment_config"]
        for key, value in entry.items():
            if isinstance(value, dict):
                assert value.items() <= running_config[key].items(), (entry["name"], key)
            else:
                assert running_config[key] == value, (entry["name"], key)


def test_extract_cpu_scales_up_under_an_ingest(
    shipped: RunningApp, photos: dict[str, bytes]
) -> None:
    """Adds faster than one replica takes them: the config's autoscaling adds a second
    ``extract_cpu`` replica (phash, colour, local, OCR, thumbnails), and every add lands."""
    assert running_replicas("extract_cpu") == 1
    base = list(photos.values())
    stop = threading.Event()
    added: list[int] = []
    errors: list[str] = []

    def add(worker: int) -> None:
        with httpx.Client(base_url=shipped.url, timeout=300) as c:
            i = 0
            while not stop.is_set():
                data = reencode(base[(worker + i) % len(base)], scale=0.3 + 0.01 * i)
                r = c.post("/images", files={"image": (f"w{worker}-{i}.jpg", data)})
                if r.status_code == 200:
                    added.append(r.json()["image_id"])
                else:
                    errors.append(r.text)
                i += 1

    with ThreadPoolExecutor(12) as pool:
        for w in range(12):
            pool.submit(add, w)
        deadline = time.monotonic() + 240
        while running_replicas("extract_cpu") < 2 and time.monotonic() < deadline:
            time.sleep(1)
        scaled = running_replicas("extract_cpu")
        stop.set()
    assert scaled == 2, f"extract_cpu stayed at {scaled} replica(s) under {len(added)} adds"
    assert errors == [] and added
    count = httpx.get(f"{shipped.url}/health", timeout=60).json()["images"]
    assert count == len(added)
