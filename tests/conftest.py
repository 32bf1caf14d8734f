"""Shared fixtures: real photos, and one Ray + Serve session per test run."""

import contextlib
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

# Set before Ray starts: no usage reporting (no network here), no token auth for a local
# test cluster, and HAProxy in front of the ingress as `make serve` runs it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
# No test may reach for a model hub: missing weights must show as "unavailable", not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Weights fetched on this machine (the Hugging Face hub cache, torch hub, ~/.cache/places365)
# must change no test: every cache, and the home folder they default under, is an empty
# folder of this run's, for the tests and for every Ray worker they start (workers inherit
# this environment).
_HOME = Path(tempfile.mkdtemp(prefix="imgsearch-test-home-"))
os.environ["HOME"] = str(_HOME)
os.environ["XDG_CACHE_HOME"] = str(_HOME / ".cache")
os.environ["HF_HOME"] = str(_HOME / ".cache" / "huggingface")
os.environ["TORCH_HOME"] = str(_HOME / ".cache" / "torch")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("TRANSFORMERS_CACHE", None)
# Test apps are deleted many times per run; production keeps the 30 s connection drain.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# HAProxy's metrics and stats ports are fixed by default: free ones let the tests run while
# `make serve` (or another test run) is up.
os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(_free_port()))
os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(_free_port()))

PHOTOS = Path(__file__).parent / "photos"


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """The committed test photos."""
    return sorted(PHOTOS.glob("*.jpg"))


@pytest.fixture(scope="session")
def photos(photo_paths: list[Path]) -> dict[str, bytes]:
    """File name -> bytes of each test photo."""
    return {p.name: p.read_bytes() for p in photo_paths}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[int]:
    """One Ray instance and Serve for the whole run; yields the HTTP port.

    Serve must be started with its port before any serve.run, and every replica asks for a
    fraction of a CPU (deployment defaults), or the graph does not fit on 2 cores.
    """
    import ray
    from ray import serve

    ray.init(num_cpus=4, include_dashboard=False, namespace="serve", logging_level="ERROR")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@dataclass
class RunningApp:
    """A deployed application under test."""

    name: str
    data_dir: Path
    url: str

    def actor(self, role: str):  # type: ignore[no-untyped-def]
        """The live Ray actor ``index:<feature>`` or ``catalog`` of this app."""
        import ray

        from index_actors.client import actor_name

        return ray.get_actor(actor_name(self.name, role), namespace="serve")


SERVE_YAML = Path(__file__).resolve().parent.parent / "configs" / "serve.yaml"
#: The features a test app has unless it names its own.
LIGHT: dict[str, dict[str, Any]] = {"phash": {}, "color": {}}


def serve_config(
    name: str,
    data_dir: Path,
    deployment_options: dict[str, dict[str, Any]] | None = None,
    **overrides: object,
) -> dict[str, Any]:
    """``configs/serve.yaml``'s application as a test deploys it: the shipped args and
    ``deployments:`` options, with its own actor names, data directory and ``overrides``.

    ``features`` names the features a test needs, phash and colour unless it says (the whole
    shipped set costs each module a minute of model loads and OCR); ``features=None`` keeps
    the shipped set whole (tests/test_config_deploy.py). Each named feature keeps its shipped
    entry (deployment, index, weight) with the test's keys over it; ``options`` replace the
    shipped ones whole (a tiny model's folder, another OCR engine). The ``deployments:``
    entries of deployments a narrowed app does not build are left out: Serve refuses them.
    ``deployment_options``: deployment name -> options over its shipped entry (a test's
    smaller queue, say).
    """
    from deployments.config import AppArgs

    config = yaml.safe_load(SERVE_YAML.read_text())
    app = config["applications"][0]
    args = {**app["args"], "name": name, "data_dir": str(data_dir), "snapshot_interval_s": 1.0}
    features = overrides.pop("features", LIGHT)
    if features is not None:
        shipped = args["features"]
        args["features"] = {
            f: {**shipped.get(f, {}), **cast(dict[str, Any], own)}
            for f, own in cast(dict[str, Any], features).items()
        }
    args.update(overrides)
    built = {"Ingress", *AppArgs.model_validate(args).deployments}
    own = deployment_options or {}
    app.update(
        name="test",
        route_prefix="/",
        args=args,
        deployments=[
            {**d, **own.get(d["name"], {})} for d in app["deployments"] if d["name"] in built
        ],
    )
    return cast(dict[str, Any], app)


def deploy(
    name: str,
    data_dir: Path,
    port: int,
    deployment_options: dict[str, dict[str, Any]] | None = None,
    **overrides: object,
) -> RunningApp:
    """Deploy ``configs/serve.yaml`` (``serve_config``) as ``serve run`` does: the config
    goes to the Serve controller, which builds the app from ``graph:build_app`` with its
    args and applies its deployment options; waits until it runs, or raises why not."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    from deployments.config import AppArgs
    from scripts.preflight import deployment_problems

    app = serve_config(name, data_dir, deployment_options, **overrides)
    # Serve ignores an option it does not know; the preflight `make serve` runs does not.
    assert not deployment_problems(app, AppArgs.model_validate(app["args"]))
    submitted = time.time()
    # Private API: Ray 2.60 has no public call that deploys a config dict from Python;
    # this is the one `serve run configs/serve.yaml` makes (ray/serve/scripts.py).
    serve_start().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications.get("test")
        if status is None or status.last_deployed_time_s < submitted:
            time.sleep(0.2)  # not yet this config (a test may redeploy without a delete)
            continue
        if status.status == ApplicationStatus.RUNNING:
            return RunningApp(name, data_dir, f"http://127.0.0.1:{port}")
        if status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"configs/serve.yaml did not deploy: {status.message}")
        time.sleep(0.2)
    raise TimeoutError(f"configs/serve.yaml not running after 300 s: {serve.status()}")


def running_replicas(deployment: str, at_least: int = 0, within_s: float = 0.0) -> int:
    """Running replicas of a deployment of the test app; waits up to ``within_s`` for
    ``at_least``."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    deadline = time.monotonic() + within_s
    while True:
        status = serve.status().applications["test"].deployments[deployment]
        running = int(status.replica_states.get(ReplicaState.RUNNING, 0))
        if running >= at_least or time.monotonic() >= deadline:
            return running
        time.sleep(0.5)


def kill_actors(name: str) -> None:
    """Kill every actor of an app for good (the detached actors outlive the Serve app),
    every shard of every index included."""
    import ray
    from ray.util import list_named_actors

    from index_actors.client import actor_name

    prefix = actor_name(name, "")
    for entry in list_named_actors(all_namespaces=True):
        if entry["namespace"] == "serve" and entry["name"].startswith(prefix):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(entry["name"], namespace="serve"), no_restart=True)


@pytest.fixture(scope="module")
def app_overrides() -> dict[str, object]:
    """AppArgs fields a test module deploys with; a module overrides this fixture to change."""
    return {}


@pytest.fixture(scope="module")
def deployment_options() -> dict[str, dict[str, Any]]:
    """Deployment name -> options over configs/serve.yaml's, for a test module's app."""
    return {}


@pytest.fixture(scope="module")
def app(
    ray_session: int,
    tmp_path_factory: pytest.TempPathFactory,
    app_overrides: dict[str, object],
    deployment_options: dict[str, dict[str, Any]],
) -> Iterator[RunningApp]:
    """The application deployed once per test module, on a fresh data directory."""
    from ray import serve

    name = f"t{uuid.uuid4().hex[:8]}"
    # A small upload cap so that the over-the-cap test sends megabytes, not the default 50.
    overrides = {"max_upload_mb": 2, **app_overrides}
    data_dir = tmp_path_factory.mktemp(name)
    running = deploy(name, data_dir, ray_session, deployment_options, **overrides)
    yield running
    serve.delete("test")
    kill_actors(name)
