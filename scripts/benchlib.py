"""The result rows the benchmark sections share (``scripts/bench.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors import Extractor, InvalidImage

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


def features(extractor: Extractor, blobs: list[bytes], query: bool = False) -> list[np.ndarray]:
    """``extract_bytes`` for inputs known to be good: a bad one is a bench bug, so it raises."""
    out = []
    for result in extractor.extract_bytes(blobs, query=query):
        if isinstance(result, InvalidImage):
            raise result
        out.append(result)
    return out
