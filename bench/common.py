"""What the benchmark sections share: the result rows and the final table, the real photos,
best-of-N timing, extraction of known-good inputs, rendered text lines, and the deployed app
with its in-process twin (``LocalApp``, the peer of the http and ingest sections)."""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deployments.config import AppArgs, load_app_args
from deployments.fusion import fuse
from extractors import Extractor, InvalidImage, build_extractor
from extractors.base import Query
from index_actors.interface import Index
from index_actors.kinds import open_index
from index_actors.store import Catalog

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30

Row = dict[str, Any]


def row(metric: str, ours: float, peer: float | None, target: str, met: bool | None) -> Row:
    """One line of the final table; ``ratio`` is ours / peer."""
    ratio = ours / peer if peer else None
    return {
        "metric": metric,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def ms(latencies: list[float], q: float) -> float:
    """Percentile ``q`` of latencies in seconds, in milliseconds."""
    return float(np.percentile(latencies, q)) * 1000


def features(extractor: Extractor, blobs: list[bytes], query: Query = False) -> list[np.ndarray]:
    """``extract_bytes`` for inputs known to be good: a bad one is a bench bug, so it raises."""
    out = []
    for result in extractor.extract_bytes(blobs, query=query):
        if isinstance(result, InvalidImage):
            raise result
        out.append(result)
    return out


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits (whole numbers past that)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def print_table(rows: list[Row]) -> None:
    """The final table: metric, ours, peer, ratio, target, met."""
    cols = ["metric", "ours", "peer", "ratio", "target", "met"]
    cells = [cols] + [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    for j, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


# --- the real photos -------------------------------------------------------------------------
def photo_dir() -> Path:
    """The folder of real photos: ../shared/photos, else tests/photos."""
    for folder in (ROOT.parent / "shared" / "photos", ROOT / "tests" / "photos"):
        if any(folder.glob("*.jpg")):
            return folder
    raise SystemExit("no photos found in ../shared/photos or tests/photos")


def load_photos() -> dict[str, bytes]:
    """File name -> bytes of the real photos."""
    paths = sorted(photo_dir().glob("*.jpg"))
    print(f"photos: {len(paths)} from {paths[0].parent}")
    return {p.name: p.read_bytes() for p in paths}


def best_of(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall time of each callable over ``repeat`` rounds, interleaved so drift hits all."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# --- rendered text (ocr, and the text tests) -------------------------------------------------
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def text_fonts(size: int) -> list[Font]:
    """Pillow's own font, and DejaVu Sans / Serif Bold where the system has them."""
    fonts: list[Font] = [ImageFont.load_default(size)]
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"):
        if (DEJAVU / name).exists():
            fonts.append(ImageFont.truetype(str(DEJAVU / name), size))
    return fonts


def rendered_line(line: str, font: Font, angle: float, quality: int = 40) -> Image.Image:
    """A line of dark text on a light background, rotated ``angle`` degrees, as a JPEG."""
    img = Image.new("RGB", (1400, 200), (245, 240, 230))
    ImageDraw.Draw(img).text((40, 60), line, fill=(20, 20, 30), font=font)
    img = img.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(245, 240, 230))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


# --- the deployed app (http, memory, ingest) ------------------------------------------------
def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolate_ports() -> None:
    """Free ports for Serve's fixed internal ones, so the bench runs beside a test session.

    Serve binds its fallback proxy (8500, 9500) and HAProxy's stats and metrics (8404, 9101)
    on fixed ports; a second Serve on the machine then never gets ready. The controller and
    proxies read these in their own processes, which inherit this environment via the raylet.
    """
    for var in (
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
    ):
        os.environ.setdefault(var, str(free_port()))


#: The port of the Serve this process started (``deploy``).
_serve_port: int | None = None


def deploy(tmp: Path, feature_names: list[str]) -> tuple[AppArgs, str]:
    """Start Serve and deploy the real app on a fresh data dir; returns its args and URL."""
    # Here, not at the top: the tests import this module for its text helpers.
    from ray import serve

    from graph import build_app

    global _serve_port
    if _serve_port is None:  # a second app (another section) shares the running Serve
        _serve_port = free_port()
        # Serve must know its port before the first serve.run.
        serve.start(http_options={"host": "127.0.0.1", "port": _serve_port})
    port = _serve_port
    shipped = load_app_args(ROOT / "configs" / "serve.yaml", "imgsearch").features
    args = AppArgs(
        name=f"bench{uuid.uuid4().hex[:8]}",
        data_dir=str(tmp / "app"),
        features={n: shipped[n] for n in feature_names},
    )
    start = time.perf_counter()
    serve.run(build_app(args), name=args.name, route_prefix="/")
    print(f"app {args.name} deployed in {time.perf_counter() - start:.1f} s on port {port}")
    return args, f"http://127.0.0.1:{port}"


class LocalApp:
    """The search path of the ingress without Ray: same extractors, indexes, fusion, names."""

    def __init__(self, args: AppArgs, path: Path) -> None:
        self.args = args
        self.extractors = {n: build_extractor(n, args.extractor_options(n)) for n in args.enabled}
        self.indexes: dict[str, Index] = {}
        for name, ex in self.extractors.items():
            self.indexes[name] = open_index(
                ex.kind, path / name, ex.dim, **args.index_options(name)
            )
        self.catalog = Catalog(path / "catalog")

    def search(self, data: bytes, names: list[str], k: int = 20) -> str | None:
        """What ``POST /search/image`` computes; returns the top file name."""
        fusion = self.args.fusion
        lists = {
            n: self.indexes[n].search(
                features(self.extractors[n], [data], query=True)[0], max(k, fusion.candidates)
            )
            for n in names
        }
        weights = {n: self.args.features[n].weight for n in lists}
        fused = fuse(lists, weights, fusion.rank_constant, "phash", fusion.duplicate_threshold)
        ids = {i for hits in lists.values() for i, _ in hits[:k]}
        ids |= {f.image_id for f in fused[:k]}
        found = self.catalog.name_of(sorted(ids))
        return found.get(fused[0].image_id) if fused else None
