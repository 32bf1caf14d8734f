"""memory: what the default app holds while idle, as a user runs it: ``serve run`` of
``configs/serve.yaml`` itself (every feature, every deployment option, the dashboard on),
only the data directory and the ports changed. PSS (shared pages split between the
processes that share them: the honest sum) beside RSS (shared pages counted once per
process), summed over every process of that Ray session, by process kind."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.common import GiB, Row, row
from bench.served import serve_default


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


def bench_memory(photos: dict[str, bytes], idle_s: float) -> list[Row]:
    """PSS and RSS of every process of an idle ``serve run configs/serve.yaml``, when it
    is ready and again after a first add and searches."""
    with tempfile.TemporaryDirectory() as tmp, serve_default(Path(tmp)) as app:
        ready = app.ready_s
        time.sleep(idle_s)
        count, pss, rss = measure(app.proc.pid)
        health = httpx.get(f"{app.url}/health", timeout=30).json()
        # Then as after a first use: one add (every feature) and the searches, which
        # load what idle processes have not (OpenCV, numba, OCR's models).
        photo = next(iter(photos.values()))
        with httpx.Client(base_url=app.url, timeout=300) as client:
            client.post("/images", files={"image": ("first.jpg", photo)}).raise_for_status()
            client.post("/search/image", files={"image": ("q.jpg", photo)}).raise_for_status()
            client.get("/search/text", params={"q": "bridge"}).raise_for_status()
        time.sleep(idle_s)
        _, used, _ = measure(app.proc.pid)
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
