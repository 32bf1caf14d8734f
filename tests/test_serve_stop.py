"""Stop means stopped: ``make serve`` stopped as a user stops it (Ctrl-C in its terminal,
SIGTERM to make) leaves no process of the app behind, HAProxy included, and the next
``make serve`` starts at once on the same port. Each start is a Ray session of its own
(``pytest -m own_ray``)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from scripts.serve import processes
from tests.conftest import SERVE_YAML, _free_port, serve_config

pytestmark = [pytest.mark.own_ray, pytest.mark.timeout(900)]
ROOT = SERVE_YAML.parent.parent
#: What the app's processes are called (Ray's own, its workers, HAProxy, serve run).
APP_PROCESSES = ("ray", "raylet", "gcs_server", "haproxy", "serve", "dashboard")


def _app_processes() -> dict[int, str]:
    """pid -> command line of every live process that looks like part of a Ray app."""
    return processes(APP_PROCESSES)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``make serve`` as from a terminal: a session and process group of its own. In the
    virtual environment these tests run in, taken as installed (``-o``: make does not
    reinstall it into a checkout that has none, as a clean clone's test run)."""
    installed = Path(sys.prefix) / "bin" / ".installed"
    venv = [f"VENV={sys.prefix}", "-o", str(installed)]
    with log.open("ab") as out:
        return subprocess.Popen(
            ["make", "--no-print-directory", "serve", f"CONFIG={config}", *venv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make serve exited: {log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"no /health after 300 s: {log.read_text()[-3000:]}")


def _light_config(tmp_path: Path, port: int) -> tuple[Path, dict[str, str]]:
    """configs/serve.yaml with phash and colour on ``port`` (a start in ~20 s instead of a
    minute: what is tested is the processes, not the models), and the environment for it:
    free ports for HAProxy's own (the shared Ray session's are set in conftest)."""
    app = serve_config("stop", tmp_path / "data")
    app.update(name="imgsearch")
    shipped = yaml.safe_load(SERVE_YAML.read_text())
    config = tmp_path / "serve.yaml"
    http = {**shipped["http_options"], "port": port}
    config.write_text(yaml.safe_dump({**shipped, "http_options": http, "applications": [app]}))
    env = {
        **os.environ,
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
    }
    env.pop("RAY_ADDRESS", None)
    return config, env


def test_a_stopped_app_leaves_nothing_and_starts_again_at_once(tmp_path: Path) -> None:
    port = _free_port()
    config, env = _light_config(tmp_path, port)
    before = set(_app_processes())
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    stops = {
        "Ctrl-C": lambda p: os.killpg(p.pid, signal.SIGINT),  # the terminal signals the group
        "SIGTERM to make": lambda p: os.kill(p.pid, signal.SIGTERM),
    }
    for how, stop in stops.items():
        proc = _start(config, log, env)  # at once after the last stop, on the same port
        _wait_up(proc, url, log)
        # The app's Ray settings (scripts/serve.py APP_ENV) reach Serve's controller.
        controller = next(
            p for p, c in _app_processes().items() if "ServeController" in c and p not in before
        )
        environ = Path(f"/proc/{controller}/environ").read_bytes().split(b"\0")
        assert b"RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5" in environ
        stop(proc)
        proc.wait(120)
        deadline = time.monotonic() + 10  # a process may still be exiting
        while set(_app_processes()) - before and time.monotonic() < deadline:
            time.sleep(0.5)
        left_over = {p: c for p, c in _app_processes().items() if p not in before}
        assert not left_over, f"after {how}: {left_over}\n{log.read_text()[-3000:]}"
        assert _port_free(port), f"after {how}: port {port} still held"


def test_a_killed_ray_session_loses_no_acknowledged_add(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """SIGKILL of every process of the app (GCS, raylet, workers, HAProxy, serve run) in the
    middle of a stream of adds, then ``make serve`` again: every acknowledged add is there,
    whole, and nothing is half visible."""
    from tests.helpers import distinct_uploads

    port = _free_port()
    config, env = _light_config(tmp_path, port)
    before = set(_app_processes())
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(config, log, env)
    _wait_up(proc, url, log)
    uploads = distinct_uploads(photos, 20)
    acked: list[int] = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i, data in enumerate(uploads, start=1):
            if len(acked) == 6:
                for pid in set(_app_processes()) - before:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                break
            r = c.post("/images", files={"image": (f"{i}.jpg", data)}, data={"image_id": i})
            assert r.status_code == 200, r.text
            acked.append(i)
        # Adds in flight when it died: each is acknowledged or not, never half stored.
        with contextlib.suppress(httpx.HTTPError):
            c.post("/images", files={"image": ("x.jpg", uploads[-1])}, data={"image_id": 99})
    proc.wait(60)
    deadline = time.monotonic() + 10
    while set(_app_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.5)
    proc = _start(config, log, env)
    try:
        _wait_up(proc, url, log)
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in acked:
                got = c.get(f"/images/{i}")
                assert got.status_code == 200, got.text
                assert sorted(got.json()["features"]) == ["color", "phash"]
            health = c.get("/health").json()
            counts = {f: health["indexes"][f]["count"] for f in ("phash", "color")}
            assert set(counts.values()) == {health["images"]}, (counts, health["images"])
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(120)
