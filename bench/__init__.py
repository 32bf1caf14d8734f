"""Benchmarks, each against a peer measured in the same run: ``make bench``
(``python -m bench [--only SECTIONS]``).

The machine is small and shared, so absolute numbers drift; what is reported is a ratio of two
things timed side by side (interleaved, best-of-N or medians). One module per section, in the
order they run:

- phash:  images/s of ``PHash`` against ``imagehash.phash`` on real photos, one core.
- search: phash search latency through the index actor against raw FAISS, at ``--n-hashes``.
- http:   ``POST /search/image`` on the deployed app against the same work in-process.
- latency: ``POST /search/image`` with whole 1600-px photos as queries over
          ``--latency-images`` stored images on the deployed default visual features, each
          alone and fused (p50, p95, the first request), against the same work in process;
          and the in-process time stage by stage (bench/latency.py).
- memory: PSS (and RSS) of every process of an idle ``serve run configs/serve.yaml``: the
          default config as users run it, dashboard on (bench/memory.py).
- ingest: the default app (``serve run configs/serve.yaml``) taking 1600-px photos in over
          HTTP and by ``make ingest`` (Ray Data, start-up included), against the in-process
          cost of the same extractors on the same files and cores (bench/ingest.py).
- models: images/s of the global-features network at batch 1 and at larger batches, beside
          phash and colour (in-process, all cores, decoding included).
- vectors: search at ``--n-vectors`` synthetic 1280-d embeddings: exact Flat against a
          trained IVF-PQ index (``scripts/train_index.py``'s training, LMDB re-ranking),
          latency and recall@10 against Flat.
- quality: recall@1 of the original for transformed copies of the photos (resize 25 %,
          JPEG 30, centre crop 70 %, mirror, +30 % brightness) among synthetic distractors:
          global features against phash and colour.
- crops:  local features against phash on crops (50/25/10 % of the area, rotated 10 degrees,
          at 0.5x; the classic pairs) among distractors: recall@1/@10, search latency, bytes
          per image; exact at ``--crop-distractors``, trained (``--local-factory``) at
          ``--crop-scale`` images (see bench/crops.py).
- ranges: descriptor id -> image id lookups/s, our RangeMap against a PostgreSQL GiST
          ``int4range`` table (a throwaway server, when PostgreSQL is installed).
- text:   recall@5 and latency of exact, misspelt and sound-alike text queries over
          ``--n-texts`` texts, the embedded backend beside PostgreSQL (bench/text.py).
- ocr:    word recall and images/s of rapidocr (the default OCR engine) against Tesseract on
          text rendered onto the photos, and on rendered lines (bench/ocr.py).
- throughput: images/s of every extractor on the shipped photos, beside global features.
- footprint: bytes per image of every default feature (LMDB, memory exact and trained) on
          the photos, and the projection to 100M and 1B images (nodes, shards, fan-out).
- duplicates: seconds to find every near-duplicate pair of 10k / 100k / 1M phashes (mirrors
          included) and group them, against brute force over all pairs (bench/duplicates.py).

Shared helpers live in ``bench/common.py``; ``python -m bench.compare OLD_REF`` runs one
section on an old commit and on the working tree, alternating, and prints new/old ratios.

A quick smoke run: ``.venv/bin/python -m bench --n-hashes 20000 --n-http 1000``.
"""

import os

# Before Ray is imported (every section module imports this package first): no usage
# reporting (no network here), no token auth on the local cluster, and HAProxy in front of
# the ingress as `make serve` runs it.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
# Missing weights must show as unavailable, not as a wait on a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The sections, in the order they run (``--only`` takes a comma list of them).
SECTIONS = (
    "phash",
    "search",
    "shards",
    "http",
    "latency",
    "memory",
    "ingest",
    "models",
    "vectors",
    "quality",
    "crops",
    "ranges",
    "text",
    "ocr",
    "throughput",
    "footprint",
    "duplicates",
)
