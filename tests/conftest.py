"""Shared fixtures: real photos, and one Ray + Serve session per test run."""

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set before Ray starts: no usage reporting (no network here), no token auth for a local
# test cluster, and HAProxy in front of the ingress as `make serve` runs it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
# No test may reach for a model hub: missing weights must show as "unavailable", not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
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


def deploy(name: str, data_dir: Path, port: int, **overrides: object) -> RunningApp:
    """Deploy the real graph with its own actor names and data directory."""
    from ray import serve

    from deployments.config import AppArgs
    from graph import build_app

    settings = {"name": name, "data_dir": str(data_dir), "snapshot_interval_s": 1.0, **overrides}
    args = AppArgs.model_validate(settings)
    serve.run(build_app(args), name="test", route_prefix="/")
    return RunningApp(name, data_dir, f"http://127.0.0.1:{port}")


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
def app(
    ray_session: int, tmp_path_factory: pytest.TempPathFactory, app_overrides: dict[str, object]
) -> Iterator[RunningApp]:
    """The application deployed once per test module, on a fresh data directory."""
    from ray import serve

    name = f"t{uuid.uuid4().hex[:8]}"
    # A small upload cap so that the over-the-cap test sends megabytes, not the default 50.
    overrides = {"max_upload_mb": 2, **app_overrides}
    running = deploy(name, tmp_path_factory.mktemp(name), ray_session, **overrides)
    yield running
    serve.delete("test")
    kill_actors(name)
