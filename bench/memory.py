"""memory: RSS (and PSS) of every Ray process of the idle deployed app, summed by process
kind, against the 3 GiB target (the dashboard included unless ``--no-dashboard``)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from bench.common import GiB, Row, row


def _process_kind(cmd: list[str]) -> str:
    """A short name for a process: its script for Python ones (dashboard.py, monitor.py)."""
    exe = Path(cmd[0]).name
    if exe.startswith("python"):
        if any("ray.dashboard" in a for a in cmd):
            return "dashboard forkserver"  # the dashboard forks its modules from it
        return next((Path(a).name for a in cmd[1:] if a.endswith(".py")), exe)
    return exe


def bench_memory(idle_s: float, dashboard: bool) -> list[Row]:
    """Sum of RSS of every Ray process (all descendants of this driver) after idling.

    RSS counts pages shared between processes once per process (the dashboard forks its
    modules from one parent), so PSS, which splits them, is printed too.
    """
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    time.sleep(idle_s)
    rss: Counter[str] = Counter()
    pss = 0
    # ray.init started this cluster, so every Ray process (GCS, raylet, dashboard, agents,
    # workers, HAProxy) descends from this process, and nobody else's does.
    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        try:
            mem = proc.memory_full_info()
            cmd = proc.cmdline()
        except psutil.Error:  # exited meanwhile
            continue
        rss[_process_kind(cmd) if cmd else proc.name()] += mem.rss
        pss += mem.pss
    total = sum(rss.values()) / GiB
    dash = sum(v for k, v in rss.items() if "dashboard" in k.lower()) / GiB
    label = "with" if dashboard else "without"
    top = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rss.most_common())
    print(f"memory: {total:.2f} GiB RSS in {len(procs)} Ray processes ({label} dashboard): {top}")
    return [
        row(f"idle Ray RSS GiB ({label} dashboard)", total, None, "<= 3", total <= 3),
        row("  of which dashboard RSS GiB", dash, None, "info", None),
        row("idle Ray PSS GiB", pss / GiB, None, "info", None),
    ]
