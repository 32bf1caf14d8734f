"""Extractors that one process runs together (a Serve deployment of several features, a Ray
Data pool): each computes its own feature, except one that rides on another's forward pass
(tags on the global network: one model in memory, one pass per image). Ray-free."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from extractors.base import Extractor, Query
from extractors.images import InvalidImage

#: One request: an upload's bytes, whether (and how) it is a query, and the feature wanted.
Request = tuple[bytes, Query, str]


def share_networks(extractors: Mapping[str, Extractor]) -> dict[str, str]:
    """Let each extractor that can ride on another's forward pass do so (before either
    loads its model): rider -> the feature it rides on."""
    riders: dict[str, str] = {}
    for name, extractor in extractors.items():
        for other, source in extractors.items():
            if other != name and other not in riders and extractor.rides_on(source):
                riders[name] = other
                break
    return riders


def run(
    extractors: Mapping[str, Any],
    riders: Mapping[str, str],
    requests: Sequence[Request],
    threads: ThreadPoolExecutor | None = None,
) -> list[Any]:
    """The feature (or ``InvalidImage``) of every request. Where a rider and its source
    are both asked for the same upload (an add computes every feature at once), one pass
    of the source gives both; the rest run each extractor on its own batch, on
    ``threads`` side by side when given (CPU extractors: SIFT, OCR (onnxruntime) and PIL
    release the GIL; networks run one at a time, since a torch op on another thread starts
    a second OpenMP team that slows both).

    ``extractors``: feature -> a loaded ``Extractor`` (one that ``ready()`` gives, for an
    unavailable one the caller answers before)."""
    out: list[Any] = [None] * len(requests)
    for query in dict.fromkeys(q for _, q, _ in requests):  # stored, query, fused query
        wanted: dict[str, list[int]] = defaultdict(list)
        for i, (_, q, name) in enumerate(requests):
            if q == query:
                wanted[name].append(i)
        for rider, source in riders.items() if not query else ():
            if rider not in wanted or source not in wanted:
                continue
            # Equal bytes are the same upload: the engine sends one per feature.
            of_source = {requests[i][0]: i for i in wanted[source]}
            pairs = [
                (i, of_source[requests[i][0]]) for i in wanted[rider] if requests[i][0] in of_source
            ]
            if not pairs:
                continue
            passes = extractors[source].passes([requests[s][0] for _, s in pairs])
            for (r, s), result in zip(pairs, passes, strict=True):
                if isinstance(result, InvalidImage):
                    out[r] = out[s] = result
                else:
                    out[s], out[r] = result[0], extractors[rider].from_pass(result[1])
            done = {i for pair in pairs for i in pair}
            wanted[rider] = [i for i in wanted[rider] if i not in done]
            wanted[source] = [i for i in wanted[source] if i not in done]
        jobs = [(name, slots) for name, slots in wanted.items() if slots]

        def one(job: tuple[str, list[int]], query: Query = query) -> list[Any]:
            name, slots = job
            return extractors[name].extract_bytes([requests[i][0] for i in slots], query)

        results = threads.map(one, jobs) if threads and len(jobs) > 1 else map(one, jobs)
        for (_, slots), got in zip(jobs, results, strict=True):
            for slot, result in zip(slots, got, strict=True):
                out[slot] = result
    return out
