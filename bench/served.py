"""The default app as a user runs it: ``serve run`` of ``configs/serve.yaml`` itself (every
feature, every deployment option, the dashboard on), only the data directory and the ports
changed, in a Ray session of its own with ``make serve``'s Ray settings
(``scripts/serve.py``); stopped with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ray  # noqa: F401 - puts the psutil it ships on the path (serve_default)
import yaml

from bench.common import ROOT, free_port, isolate_ports
from scripts.serve import app_env

#: How long the default app may take to answer /health from a cold start.
START_S = 600.0


@dataclass
class Served:
    """A running ``serve run``: its process (the session's root), URL, config file and
    the seconds it took to answer /health."""

    proc: subprocess.Popen[bytes]
    url: str
    config: Path
    ready_s: float


def default_config(tmp: Path, port: int) -> Path:
    """``configs/serve.yaml`` with its data directory under ``tmp`` and its port ``port``."""
    cfg = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    cfg["http_options"]["port"] = port
    for app in cfg["applications"]:
        app["args"]["data_dir"] = str(tmp / "data")
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def serve_default(tmp: Path) -> Iterator[Served]:
    """Start ``serve run`` of the default config under ``tmp`` and wait for /health."""
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    isolate_ports()
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = default_config(tmp, port)
    env = {**app_env(), "RAY_DASHBOARD_PORT": str(free_port())}
    # Its own Ray session (ray.init in `serve run`), dashboard on, as `make serve`.
    cmd = [sys.executable, "-m", "ray.serve.scripts", "run", str(config)]
    serve_bin = Path(sys.executable).with_name("serve")
    if serve_bin.exists():
        cmd = [str(serve_bin), "run", str(config)]
    log_path = tmp / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < START_S:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve run exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(2)
            else:
                raise RuntimeError("the default app did not answer /health in time")
            yield Served(proc, url, config, time.perf_counter() - started)
        finally:
            # The whole session: serve run, and the Ray processes it started.
            kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            for kid in kids:
                if kid.is_running():
                    kid.kill()
