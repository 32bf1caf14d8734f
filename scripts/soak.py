"""A soak run: mixed load on a running app for a bounded time, then what it did to the app.

    python scripts/soak.py [--url http://127.0.0.1:8000] [--minutes 10] [--photos DIR]

Workers add new photos, re-add stored ids with other photos, search by photo, read images,
delete, and send bad uploads (a 4xx each). Each worker owns its ids, so the run knows which
images must exist at the end. The number of workers grows by one every ``--step-s`` seconds
and halves on a 503 (the app's overload answer), to find the highest rate the machine
sustains without 503s. At the end it prints requests by status, p50/p99 per route, the RSS
growth of each process of the app (``ray::``/raylet/GCS/HAProxy on this machine) from minute
2 to the end (target: under 10 %), and a consistency check: every image it says exists has
every feature of its last upload, and no deleted one is found, by id or by search.
Exit status 1 when a 5xx other than 503 came back or the check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.serve import processes

#: What an app process's command line contains (Ray's workers, its daemons, HAProxy).
APP_PROCESSES = ("ray::", "raylet", "gcs_server", "haproxy", "dashboard")
#: The longest result list the app gives (``fusion.max_k``).
MAX_K = 1000
#: Each worker's share of the id space: worker w owns ids ``BASE + w * SPAN + 1...``.
BASE, SPAN = 9_000_000, 100_000


@dataclass
class Soak:
    """What a run did and saw."""

    url: str
    photos: list[bytes]
    headers: dict[str, str]
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: id -> the index of the photo it holds now (ids it deleted are absent).
    stored: dict[int, int] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    #: ids whose last write got no clear answer (no answer, a 5xx): left out of the check.
    unsure: set[int] = field(default_factory=set)
    features: list[str] = field(default_factory=list)
    #: Workers that failed (a bug of the soak, or an answer it could not read).
    crashes: list[str] = field(default_factory=list)
    overloaded: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, client: httpx.Client, route: str, method: str, path: str, **kw: object) -> int:
        """One request; its status and latency are recorded under ``route``. The features a
        first successful add computed are the ones every stored image must have."""
        start = time.perf_counter()
        try:
            answer = client.request(method, path, headers=self.headers, **kw)  # type: ignore[arg-type]
            status = answer.status_code
        except httpx.HTTPError:
            status = 0  # no answer
        if status == 200 and route.startswith("POST /images (") and not self.features:
            ok = [f for f, state in answer.json()["features"].items() if state == "ok"]
            self.features = sorted(ok)
        with self.lock:
            self.statuses[route, status] += 1
            self.latency[route].append(time.perf_counter() - start)
        if status == 503:
            self.overloaded.set()
        return status

    def worker(self, w: int, stop: threading.Event) -> None:
        """``_work``, with a crash of its own recorded (it fails the run), not printed."""
        try:
            self._work(w, stop)
        except Exception as exc:
            with self.lock:
                self.crashes.append(f"worker {w}: {type(exc).__name__}: {exc}")

    def _work(self, w: int, stop: threading.Event) -> None:
        """Mixed requests until ``stop``; its own ids, so that it knows what must exist."""
        rng = random.Random(w)
        mine: list[int] = []
        next_id = BASE + w * SPAN + 1
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not stop.is_set():
                op = rng.random() if mine else 0.0  # nothing of its own yet: an add
                photo = rng.randrange(len(self.photos))
                image = {"image": (f"{photo}.jpg", self.photos[photo])}
                if op < 0.5:  # an add: a new image, or a stored one with another photo
                    new = op < 0.35 or not mine
                    image_id = next_id if new else rng.choice(mine)
                    next_id += new
                    route = "POST /images (new)" if new else "POST /images (re-add)"
                    got = self.call(
                        c, route, "POST", "/images", files=image, data={"image_id": image_id}
                    )
                    self.wrote(image_id, got, photo)
                    if new and got == 200:
                        mine.append(image_id)
                elif op < 0.8:
                    self.call(
                        c,
                        "POST /search/image",
                        "POST",
                        "/search/image",
                        files=image,
                        data={"k": 10},
                    )
                elif op < 0.88:
                    self.call(c, "GET /images/{id}", "GET", f"/images/{rng.choice(mine)}")
                elif op < 0.95:
                    image_id = mine.pop(rng.randrange(len(mine)))
                    got = self.call(c, "DELETE /images/{id}", "DELETE", f"/images/{image_id}")
                    self.wrote(image_id, got, None)
                    if got != 200:
                        mine.append(image_id)
                else:
                    bad = {"image": ("bad.jpg", os.urandom(2048))}
                    self.call(c, "POST /images (bad upload)", "POST", "/images", files=bad)

    def wrote(self, image_id: int, status: int, photo: int | None) -> None:
        """Record a write's outcome: ``photo`` stored (None: deleted) on a 200; unknown after
        no answer or a 5xx (a refusal from the queue, 503 with Retry-After, did nothing, but
        a failed re-add may have replaced some features)."""
        with self.lock:
            if status == 200:
                self.unsure.discard(image_id)
                if photo is None:
                    self.stored.pop(image_id, None)
                    self.deleted.add(image_id)
                else:
                    self.stored[image_id] = photo
            elif status == 0 or status >= 500:
                self.unsure.add(image_id)

    def check(self) -> list[str]:
        """Every stored image has every feature of the first add, and the photo it holds now
        finds it (one search per photo, phash alone, its whole list); no deleted image is
        read or found."""
        problems = []
        sure = {i: p for i, p in self.stored.items() if i not in self.unsure}
        by_photo: dict[int, set[int]] = defaultdict(set)
        for image_id, photo in sure.items():
            by_photo[photo].add(image_id)
        only = {"features": "phash"} if "phash" in self.features else {}
        found: set[int] = set()
        with httpx.Client(base_url=self.url, timeout=300, headers=self.headers) as c:
            for image_id in sorted(sure):
                got = c.get(f"/images/{image_id}")
                if got.status_code != 200 or sorted(got.json()["features"]) != self.features:
                    problems.append(f"image {image_id}: {got.status_code} {got.text[:200]}")
            for photo, ids in sorted(by_photo.items()):
                query = {"image": ("q.jpg", self.photos[photo])}
                data = {"k": MAX_K, **only}
                hits = c.post("/search/image", files=query, data=data).json()["results"]
                found |= {h["image_id"] for h in hits}
                if len(hits) < MAX_K:  # the whole list: every copy of the photo is in it
                    exact = {h["image_id"] for h in hits if _same(h)}
                    problems += [
                        f"image {i}: its last photo does not find it" for i in sorted(ids - exact)
                    ]
            for image_id in sorted(self.deleted - set(self.stored) - self.unsure):
                if c.get(f"/images/{image_id}").status_code != 404:
                    problems.append(f"deleted image {image_id} is still there")
                if image_id in found:
                    problems.append(f"deleted image {image_id} is found by search")
        return problems


def _same(hit: dict[str, Any]) -> bool:
    """Whether a hit is the query's own photo: phash distance 0, where phash is stored."""
    phash = hit["matches"].get("phash")
    return phash is None or phash.get("distance") == 0


def app_rss() -> dict[str, int]:
    """RSS in bytes of each app process on this machine, by ``pid command``."""
    out = {}
    for pid, cmd in processes(APP_PROCESSES).items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        rss = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")]
        out[f"{pid} {cmd.split()[0][:60]}"] = int(rss[0]) * 1024 if rss else 0
    return out


def run(soak: Soak, seconds: float, step_s: float, max_workers: int) -> dict[str, dict[str, int]]:
    """Drive the load for ``seconds``; the RSS of each process at minute 2 and at the end."""
    stops: list[threading.Event] = []
    threads: list[threading.Thread] = []
    start = time.monotonic()
    rss: dict[str, dict[str, int]] = {}
    last_step = start
    while (now := time.monotonic()) - start < seconds:
        if "minute 2" not in rss and now - start >= min(120.0, seconds / 2):
            rss["minute 2"] = app_rss()
        if soak.overloaded.is_set() and len(stops) > 1:
            for _ in range(len(stops) // 2):  # halve: the app said it is over its queue
                stops.pop().set()
            soak.overloaded.clear()
            last_step = now
        elif not stops or (now - last_step >= step_s and len(stops) < max_workers):
            stop = threading.Event()
            t = threading.Thread(target=soak.worker, args=(len(threads), stop), daemon=True)
            stops.append(stop)
            threads.append(t)
            t.start()
            last_step = now
        time.sleep(0.5)
    for stop in stops:
        stop.set()
    for t in threads:
        t.join()
    rss["end"] = app_rss()
    return rss


def report(soak: Soak, rss: dict[str, dict[str, int]], problems: list[str]) -> str:
    """The run's figures, for a person."""
    lines = ["requests by route and status:"]
    for (route, status), n in sorted(soak.statuses.items()):
        lines.append(f"  {route:28} {status or 'no answer'}: {n}")
    lines.append("latency per route, p50 / p99 ms:")
    for route, seconds in sorted(soak.latency.items()):
        q = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else seconds * 99
        lines.append(f"  {route:28} {1000 * q[49]:.0f} / {1000 * q[98]:.0f}  ({len(seconds)})")
    lines.append("RSS from minute 2 to the end, per process:")
    start, end = rss.get("minute 2", {}), rss["end"]
    for proc in sorted(set(start) & set(end), key=lambda p: -end[p]):
        growth = (end[proc] - start[proc]) / max(start[proc], 1)
        lines.append(f"  {proc:70} {start[proc] >> 20} -> {end[proc] >> 20} MiB ({growth:+.1%})")
    # Replicas autoscaling started or stopped meanwhile have no growth to show.
    lines += [f"  {p:70} gone by the end" for p in sorted(set(start) - set(end))]
    lines += [
        f"  {p:70} started after minute 2: {end[p] >> 20} MiB"
        for p in sorted(set(end) - set(start))
    ]
    lines.append(
        f"images it says exist: {len(soak.stored)}, deleted: {len(soak.deleted)}, "
        f"left out (a write without a clear answer): {len(soak.unsure)}"
    )
    lines.append("consistency: " + ("ok" if not problems else f"{len(problems)} problems"))
    lines += [f"  {p}" for p in problems[:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when no unexpected 5xx came back and the check passed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--minutes", type=float, default=10.0)
    shared = Path(__file__).resolve().parents[2] / "shared" / "photos"
    p.add_argument("--photos", default=str(shared), help="a folder of .jpg photos")
    p.add_argument("--step-s", type=float, default=15.0, help="add a worker this often")
    p.add_argument("--max-workers", type=int, default=16)
    p.add_argument("--api-key", default=os.environ.get("IMGSEARCH_API_KEY"), help="a write key")
    ns = p.parse_args(argv)
    photos = [f.read_bytes() for f in sorted(Path(ns.photos).glob("*.jpg"))]
    if not photos:
        print(f"soak: no .jpg photos in {ns.photos}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {ns.api_key}"} if ns.api_key else {}
    soak = Soak(ns.url.rstrip("/"), photos, headers)
    rss = run(soak, 60 * ns.minutes, ns.step_s, ns.max_workers)
    problems = soak.crashes + soak.check()
    print(report(soak, rss, problems))
    errors = sum(n for (_, status), n in soak.statuses.items() if status >= 500 and status != 503)
    return 1 if errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
