"""Train a feature's index (IVF-PQ, OPQ, ...) and/or PCA-whitening, and switch to it.

    python scripts/train_index.py global --factory "OPQ32,IVF1024,PQ32" [--whiten 512]
    python scripts/train_index.py global --whiten 256            # whitening, Flat index
    python scripts/train_index.py clip --flat                     # back to exact Flat
    python scripts/train_index.py local --factory "IVF1024,PQ16"  # local features' descriptors

When the app has API keys, give a write key: IMGSEARCH_API_KEY=KEY (or --api-key KEY).

For local features the sample is of descriptors (from random images), and there is no
whitening: the trained index only picks the candidates, which are re-matched with the exact
descriptors kept in LMDB.

A random sample of the stored (raw) vectors comes from the running app's index actor; the
training runs here, in this process, not in the actor that answers searches; the empty
trained index and the whitening go back to the actor, which fills the new index from LMDB
while it keeps serving, replays the writes made meanwhile, swaps, and keeps both as files
next to its store (they survive restarts). Stored vectors stay raw: the whitening is applied
when the index is built and to every query.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

import faiss
import numpy as np
import ray
import yaml

from deployments import auth
from deployments.config import load_app_args
from index_actors.client import IndexClient
from index_actors.trained import train_template
from index_actors.vector import transform_to_bytes
from index_actors.vector import whiten as whiten_rows


def fit_whitening(sample: np.ndarray, dim: int) -> Any:
    """PCA-whitening to ``dim`` dimensions (FAISS PCAMatrix, eigenvalues^-1/2)."""
    if dim > sample.shape[1]:
        raise ValueError(f"--whiten {dim} is more than the {sample.shape[1]} input dimensions")
    if len(sample) <= dim:
        raise ValueError(f"whitening to {dim} dimensions needs more than {dim} stored vectors")
    pca = faiss.PCAMatrix(sample.shape[1], dim, -0.5)
    pca.train(np.ascontiguousarray(sample, dtype=np.float32))
    return pca


def train(
    sample: np.ndarray, metric: str, factory: str | None, whiten: int | None
) -> tuple[bytes | None, bytes | None]:
    """The serialized empty trained index (None: Flat) and whitening (None: none)."""
    white = fit_whitening(sample, whiten) if whiten else None
    data = whiten_rows(white, np.ascontiguousarray(sample, dtype=np.float32))
    if not factory or factory == "Flat":
        return None, transform_to_bytes(white) if white is not None else None
    blob = train_template(data, factory, metric)
    return blob, transform_to_bytes(white) if white is not None else None


def run(
    client: IndexClient,
    feature: str,
    metric: str,
    factory: str | None,
    whiten: int | None,
    sample_size: int,
) -> dict[str, Any]:
    """Sample from the feature's index actors (across its shards), train here, and have
    every shard adopt the result."""
    started = time.perf_counter()
    sample = asyncio.run(client.sample(feature, sample_size))
    if len(sample) == 0:
        raise ValueError("the index is empty: ingest images before training")
    trained, white = train(sample, metric, factory, whiten)
    trained_s = time.perf_counter() - started
    result = asyncio.run(client.adopt(feature, trained, white))
    return {
        **result,
        "sample": len(sample),
        "train_s": round(trained_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("feature", help="a vector or local feature of the app: global, clip, local")
    p.add_argument("--factory", help='FAISS index factory string, e.g. "OPQ32,IVF1024,PQ32"')
    p.add_argument("--whiten", type=int, help="PCA-whiten to this many dimensions")
    p.add_argument("--flat", action="store_true", help="back to exact Flat, no whitening")
    p.add_argument("--sample", type=int, default=100_000, help="training vectors (default 100000)")
    p.add_argument("--config", default="configs/serve.yaml", help="the app's Serve config")
    p.add_argument("--app", default="imgsearch", help="application name in the config")
    p.add_argument("--address", default="auto", help="Ray cluster address the app runs on")
    p.add_argument(
        "--api-key",
        default=os.environ.get(auth.ENV_KEY),
        help=f"a write key, when the app has API keys (default: ${auth.ENV_KEY})",
    )
    ns = p.parse_args(argv)
    if ns.flat == bool(ns.factory or ns.whiten):
        p.error("give --factory and/or --whiten, or --flat")
    if ns.sample < 1 or (ns.whiten is not None and ns.whiten < 1):
        p.error("--sample and --whiten must be >= 1")
    return ns


def main(argv: list[str] | None = None) -> int:
    """Train and switch from the command line; prints what the index became."""
    ns = parse_args(argv)
    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"train_index: {ns.config}: {exc}", file=sys.stderr)
        return 2
    if ns.feature not in args.enabled:
        print(f"train_index: {ns.feature} is not enabled in {ns.config}", file=sys.stderr)
        return 2
    # Training reaches the index actors through Ray, not HTTP: it checks the key itself.
    problem = auth.client_problem(args.api_keys_file, ns.api_key)
    if problem:
        print(f"train_index: {problem}", file=sys.stderr)
        return 2
    metric = args.index_options(ns.feature).get("metric", "l2")
    try:
        ray.init(address=ns.address, namespace="serve", logging_level=logging.WARNING)
    except ConnectionError as exc:
        print(f"train_index: {exc} (start the app first: make serve)", file=sys.stderr)
        return 2
    try:
        client = IndexClient.connect(args.name, {ns.feature: args.shards_of(ns.feature)})
        print(run(client, ns.feature, metric, ns.factory, ns.whiten, ns.sample))
    except ValueError as exc:
        print(f"train_index: {exc}", file=sys.stderr)
        return 2
    except ray.exceptions.RayTaskError as exc:
        print(f"train_index: {exc.cause if exc.cause else exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
