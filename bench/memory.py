"""memory: what the default app holds while idle, as a user runs it: ``serve run`` of
``configs/serve.yaml`` itself (every feature, every deployment option, the dashboard on),
only the data directory and the ports changed. PSS (shared pages split between the
processes that share them: the honest sum) beside RSS (shared pages counted once per
process), summed over every process of that Ray session, by process kind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from bench.common import ROOT, GiB, Row, free_port, isolate_ports, row

#: How long the default app may take to answer /health from a cold start.
START_S = 600.0


def _process_kind(cmd: list[str], name: str) -> str:
    """A short name for a process: a Serve replica's or actor's name, a Python script's."""
    if not cmd:
        return name
    if name.startswith(("ray::", "ServeReplica", "ServeController")):
        return name.split(".")[0]  # without the method it is running now
    exe = Path(cmd[0]).name
    if exe.startswith("python"):
        if any("ray.dashboard" in a for a in cmd):
            return "dashboard"
        return next((Path(a).name for a in cmd[1:] if a.endswith(".py")), exe)
    return exe


def measure(root: int) -> tuple[int, Counter[str], Counter[str]]:
    """Process count, and PSS and RSS by kind, of ``root`` and its descendants."""
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    pss: Counter[str] = Counter()
    rss: Counter[str] = Counter()
    top = psutil.Process(root)
    procs = [top, *top.children(recursive=True)]
    for proc in procs:
        try:
            mem = proc.memory_full_info()
            kind = _process_kind(proc.cmdline(), proc.name())
        except psutil.Error:  # exited meanwhile
            continue
        pss[kind] += mem.pss
        rss[kind] += mem.rss
    return len(procs), pss, rss


def default_config(tmp: Path, port: int) -> Path:
    """``configs/serve.yaml`` with its data directory under ``tmp`` and its port ``port``."""
    cfg = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    cfg["http_options"]["port"] = port
    for app in cfg["applications"]:
        app["args"]["data_dir"] = str(tmp / "data")
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def bench_memory(photos: dict[str, bytes], idle_s: float) -> list[Row]:
    """PSS and RSS of every process of an idle ``serve run configs/serve.yaml``, when it
    is ready and again after a first add and searches."""
    import psutil

    isolate_ports()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = default_config(Path(tmp), port)
        env = {**os.environ, "RAY_DASHBOARD_PORT": str(free_port())}
        # Its own Ray session (ray.init in `serve run`), dashboard on, as `make serve`.
        cmd = [sys.executable, "-m", "ray.serve.scripts", "run", str(config)]
        serve_bin = Path(sys.executable).with_name("serve")
        if serve_bin.exists():
            cmd = [str(serve_bin), "run", str(config)]
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < START_S:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve run exited: {Path(log.name).read_text()[-2000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(2)
            else:
                raise RuntimeError("the default app did not answer /health in time")
            ready = time.perf_counter() - started
            time.sleep(idle_s)
            count, pss, rss = measure(proc.pid)
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
            # Then as after a first use: one add (every feature) and the searches, which
            # load what idle processes have not (OpenCV, numba, Tesseract's wrapper).
            photo = next(iter(photos.values()))
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=300) as client:
                client.post("/images", files={"image": ("first.jpg", photo)}).raise_for_status()
                client.post("/search/image", files={"image": ("q.jpg", photo)}).raise_for_status()
                client.get("/search/text", params={"q": "bridge"}).raise_for_status()
            time.sleep(idle_s)
            _, used, _ = measure(proc.pid)
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
            log.close()
    total_pss, total_rss = sum(pss.values()) / GiB, sum(rss.values()) / GiB
    unavailable = [n for n, e in health["extractors"].items() if not e.get("available")]
    print(
        f"memory: default config ready in {ready:.0f} s; {count} processes; "
        f"{total_pss:.2f} GiB PSS, {total_rss:.2f} GiB RSS; unavailable: {unavailable}"
    )
    for kind, value in pss.most_common():
        print(
            f"memory:   {kind:<40} PSS {value / 2**20:7.0f} MiB   RSS {rss[kind] / 2**20:7.0f} MiB"
        )
    dash = sum(v for k, v in pss.items() if "dashboard" in k.lower()) / GiB
    after = sum(used.values()) / GiB
    grew = ", ".join(
        f"{k} +{(used[k] - pss[k]) / 2**20:.0f}" for k in used if used[k] - pss[k] > 8 * 2**20
    )
    print(f"memory: after a first add and searches: {after:.2f} GiB PSS (MiB grown: {grew})")
    return [
        row(
            "idle PSS GiB, default config, dashboard on (peer: RSS sum)",
            total_pss,
            total_rss,
            "<= 3.0",
            total_pss <= 3.0,
        ),
        row("  of which dashboard PSS GiB", dash, None, "info", None),
        row("idle PSS GiB after a first add and searches", after, None, "info", None),
        row("cold serve run to the first /health 200, s", ready, None, "info", None),
    ]
