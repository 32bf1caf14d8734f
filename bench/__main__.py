"""``python -m bench [--only SECTIONS] [--json PATH]``: run the selected sections (all by
default, in the order below) and print the table of ratios against their peers; see the
package docstring (``bench/__init__.py``) for what each section measures."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import ray
from ray import serve

import bench
from bench import SECTIONS
from bench.common import Row, deploy, features, isolate_ports, load_photos, photo_dir, print_table
from bench.crops import bench_crops
from bench.duplicates import bench_duplicates
from bench.footprint import bench_footprint
from bench.http import bench_http
from bench.ingest import bench_ingest
from bench.latency import bench_latency
from bench.memory import bench_memory
from bench.models import bench_models
from bench.ocr import bench_ocr
from bench.phash import bench_phash
from bench.quality import bench_quality
from bench.ranges import bench_ranges
from bench.search import bench_search
from bench.shards import bench_shards
from bench.text import bench_text
from bench.throughput import bench_throughput
from bench.vectors import bench_vectors
from extractors import PHash


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=bench.__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ",".join(SECTIONS))
    p.add_argument("--n-hashes", type=int, default=1_000_000, help="stored hashes for search")
    p.add_argument("--n-http", type=int, default=10_000, help="stored images for http")
    p.add_argument("--ingest-sizes", default="40,120", help="comma list of file counts for ingest")
    p.add_argument("--repeat", type=int, default=5, help="best-of-N rounds for phash")
    p.add_argument("--searches", type=int, default=200, help="timed index searches")
    p.add_argument("--http-searches", type=int, default=100, help="timed HTTP searches")
    p.add_argument(
        "--latency-images", type=int, default=420, help="stored images for latency (>= 400)"
    )
    p.add_argument(
        "--latency-searches", type=int, default=45, help="timed searches per source, latency"
    )
    p.add_argument(
        "--features",
        default="phash,color",
        help="features of the deployed app (http), as in configs/serve.yaml",
    )
    p.add_argument("--idle-s", type=float, default=10.0, help="idle time before memory")
    p.add_argument("--no-dashboard", action="store_true", help="start Ray without dashboard")
    p.add_argument("--batches", default="2,4,8,16", help="batch sizes for models (batch 1 always)")
    p.add_argument("--n-vectors", type=int, default=1_000_000, help="stored vectors")
    p.add_argument(
        "--shard-vectors",
        type=int,
        default=1_000_000,
        help="1280-d vectors for shards (two copies, each in LMDB and FAISS: ~20 GB at 1M)",
    )
    # PCA to 256-d before IVF-PQ: embeddings have far fewer real dimensions than 1280, and
    # 4-d PQ sub-vectors keep their order where 20-d ones lose it (measured: recall@10 0.72
    # against 0.44 at nprobe 16, rerank 100, 1M vectors).
    p.add_argument("--factory", default="PCAR256,IVF1024,PQ64", help="trained index for vectors")
    p.add_argument(
        "--probes",
        default="32:400,16:100,16:0",
        help="nprobe:rerank settings for vectors (rerank 0: PQ's own order)",
    )
    p.add_argument("--distractors", type=int, default=500, help="distractors for quality")
    p.add_argument("--crop-distractors", type=int, default=1000, help="distractors for crops")
    p.add_argument("--crop-scale", type=int, default=10_000, help="stored images for crops")
    p.add_argument(
        "--local-factory", default="IVF1024,PQ16", help="trained descriptor index for crops"
    )
    p.add_argument("--n-texts", type=int, default=10_000, help="stored texts for text")
    p.add_argument("--json", type=Path, help="also write the table here as JSON")
    args = p.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.only - set(SECTIONS):
        p.error(f"unknown sections {sorted(args.only - set(SECTIONS))}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the selected sections and print the table."""
    opts = parse_args(argv)
    photos = load_photos()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if "phash" in opts.only:
            rows += bench_phash(photos, opts.repeat)
        if "models" in opts.only:
            batches = [int(b) for b in opts.batches.split(",") if b.strip()]
            rows += bench_models(photos, min(opts.repeat, 3), batches)
        if "quality" in opts.only:
            rows += bench_quality(photos, opts.distractors, tmp)
        if "crops" in opts.only:
            pairs = photo_dir() / "pairs"
            rows += bench_crops(
                photos, pairs, opts.crop_distractors, opts.crop_scale, opts.local_factory, tmp
            )
        if "ranges" in opts.only:
            rows += bench_ranges(10_000, 200, 2.0)
        if "text" in opts.only:
            rows += bench_text(opts.n_texts, 200, photos)
        if "ocr" in opts.only:
            rows += bench_ocr(photos)
        if "throughput" in opts.only:
            rows += bench_throughput(photos)
        if "footprint" in opts.only:
            rows += bench_footprint(photos, tmp / "footprint")
        if "duplicates" in opts.only:
            rows += bench_duplicates(photos)
        if "vectors" in opts.only:
            settings = [(int(a), int(b)) for a, b in (x.split(":") for x in opts.probes.split(","))]
            rows += bench_vectors(opts.n_vectors, opts.factory, settings, tmp)
        if "memory" in opts.only:  # its own Ray session: `serve run` of the default config
            rows += bench_memory(photos, opts.idle_s)
        if "ingest" in opts.only:  # its own Ray session too
            sizes = [int(n) for n in opts.ingest_sizes.split(",")]
            rows += bench_ingest(photos, sizes, tmp)
        if opts.only & {"search", "shards", "latency", "http"}:
            isolate_ports()
            ray.init(
                num_cpus=4,
                namespace="serve",
                include_dashboard=not opts.no_dashboard,
                logging_level=logging.ERROR,
            )
            try:
                if "search" in opts.only:
                    query = features(PHash(), [next(iter(photos.values()))], query=True)[0]
                    rows += bench_search(query, opts.n_hashes, opts.searches, tmp / "search")
                if "shards" in opts.only:
                    rows += bench_shards(
                        opts.n_hashes, opts.shard_vectors, opts.searches, tmp / "shards"
                    )
                if "latency" in opts.only:  # its own app, deleted after it
                    rows += bench_latency(photos, opts.latency_images, opts.latency_searches, tmp)
                if "http" in opts.only:
                    args, url = deploy(tmp, opts.features.split(","))
                    rows += bench_http(args, url, photos, opts.n_http, opts.http_searches, tmp)
            finally:
                if opts.only & {"latency", "http"}:
                    serve.shutdown()
                ray.shutdown()  # the cluster is ours: this also ends the detached actors
    print()
    print_table(rows)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
