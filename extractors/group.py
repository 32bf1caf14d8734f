"""Extractors that one process runs together (a Serve deployment of several features, a Ray
Data pool): each computes its own feature, except one that rides on another's forward pass
(tags on the global network: one model in memory, one pass per image). Ray-free."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from extractors.base import Extractor, Query
from extractors.images import InvalidImage

#: One request: an upload's bytes, whether (and how) it is a query, and the feature wanted.
Request = tuple[bytes, Query, str]


class LibraryThreads:
    """The threads cv2 (SIFT, OCR's image steps) and torch may use, pools that are one per
    process: their configured count (cv2: every core; torch: the feature's ``threads``) for
    a batch of queries while no batch of stored images runs in the process, one each for
    anything else.

    An ingest keeps every core busy with batches and processes side by side, where a
    library's extra threads only contend with them: measured on 2 cores, HTTP ingest of the
    default features went from 0.99 to 1.39 images/s with SIFT and torch on one thread
    (``extract_cpu``'s CPU per image from 1.48 to 1.10 s). A search wants the cores: a lone
    fused query's SIFT takes 118 ms on 2 threads, 176 ms on one.
    The queries of one fused search reach a process together (phash, colour and local
    features in ``extract_cpu``): phash's few milliseconds must not leave local features'
    SIFT on one thread, so other queries do not count against a query.
    A library this process has not imported is left alone (no import for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored = 0  # batches with stored images running
        self._configured: dict[str, int] | None = None

    #: Each library's getter and setter of its thread count. torch's setting is the calling
    #: thread's (OpenMP): ``batch`` runs in the thread that runs the batch.
    CALLS: ClassVar[dict[str, tuple[str, str]]] = {
        "cv2": ("getNumThreads", "setNumThreads"),
        "torch": ("get_num_threads", "set_num_threads"),
    }

    @classmethod
    def _libraries(cls) -> dict[str, Any]:
        return {n: sys.modules[n] for n in cls.CALLS if n in sys.modules}

    @classmethod
    def _get(cls) -> dict[str, int]:
        return {n: getattr(m, cls.CALLS[n][0])() for n, m in cls._libraries().items()}

    @classmethod
    def _set(cls, counts: dict[str, int]) -> None:
        for name, module in cls._libraries().items():
            if name in counts:
                getattr(module, cls.CALLS[name][1])(counts[name])

    @contextlib.contextmanager
    def batch(self, queries_only: bool) -> Iterator[None]:
        """Set the threads for a batch that runs inside the block."""
        with self._lock:
            if self._configured is None or self._configured.keys() != self._libraries().keys():
                # First seen after the extractors loaded (their ``threads`` applied).
                self._configured = {**self._get(), **(self._configured or {})}
            self._stored += not queries_only
            alone = queries_only and self._stored == 0
            self._set(self._configured if alone else dict.fromkeys(self._configured, 1))
        try:
            yield
        finally:
            with self._lock:
                self._stored -= not queries_only


#: This process's (cv2 and torch are per process).
library_threads = LibraryThreads()


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
    unavailable one the caller answers before). cv2 and torch get the threads that
    ``LibraryThreads`` gives the batch."""
    with library_threads.batch(all(q for _, q, _ in requests)):
        return _run(extractors, riders, requests, threads)


def _run(
    extractors: Mapping[str, Any],
    riders: Mapping[str, str],
    requests: Sequence[Request],
    threads: ThreadPoolExecutor | None,
) -> list[Any]:
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
