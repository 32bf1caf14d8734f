"""Matching a query's keypoints against stored images (Ray-free, NumPy and OpenCV): the
candidates by votes, mutual nearest neighbours with the ratio test, and the inliers of a
homography; the threads that verify candidates side by side."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def ranked(
    close: np.ndarray,
    owners: np.ndarray,
    knn_min_matches: int,
    candidates: int,
    exclude: int | None,
) -> list[tuple[int, int]]:
    """The ``candidates`` images with the most votes (at least ``knn_min_matches``), given
    which of each query descriptor's neighbours are ``close`` and the images that own
    them."""
    # One vote per query descriptor and image, however many of its neighbours agree.
    voted = {(q, int(owners[q, j])) for q, j in zip(*np.nonzero(close), strict=True)}
    votes: dict[int, int] = {}
    for _, image_id in voted:
        if image_id != exclude:
            votes[image_id] = votes.get(image_id, 0) + 1
    return sorted(
        ((i, v) for i, v in votes.items() if v >= knn_min_matches), key=lambda iv: -iv[1]
    )[:candidates]


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def verifiers() -> ThreadPoolExecutor:
    """The threads that verify candidates, one per core, shared by the searches.

    NumPy's BLAS is set to one thread in this process: the verifiers already use every
    core, and its own threads on top of them turned each 200x200 product of
    ``mutual_matches`` from 0.2 ms into 3-15 ms on 2 cores (measured). FAISS has its own
    BLAS, untouched, whose threads its big searches need."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(prefix="libscipy_openblas").limit(limits=1)
    return ThreadPoolExecutor(cores(), thread_name_prefix="verify")


def mutual_matches(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Index pairs of mutual nearest neighbours passing the second-nearest ratio test, in
    order of ``a``'s index: kornia's ``match_smnn``, in NumPy, so that the index actor
    never loads torch for it (~300 MB in that process)."""
    if len(a) < 2 or len(b) < 2:
        return np.empty((0, 2), np.int64)
    x, y = a.astype(np.float64), b.astype(np.float64)
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)

    def nearest(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest column, and whether it passes the ratio test.

        Squared distances order as distances do, so only each row's two smallest are
        square-rooted, and ``argmin`` and ``partition`` find them: a full ``sqrt`` and an
        ``argpartition`` of the matrix took 60 % of a verification (2.2 ms -> 0.9 ms for
        200 x 200, the same pairs). A tie for the nearest passes the ratio test only at a
        threshold of 1 or more; ``argmin`` then names the first of the tied columns.
        """
        first = d.argmin(axis=1)
        low, high = np.sqrt(np.maximum(np.partition(d, 1, axis=1)[:, :2], 0.0)).T
        with np.errstate(divide="ignore", invalid="ignore"):
            passed = low / high <= threshold  # 0/0 is NaN: no match, as in kornia
        return first, passed

    to_b, ok_a = nearest(squared)
    to_a, ok_b = nearest(np.ascontiguousarray(squared.T))  # a row-wise pass: ~2x faster
    i = np.flatnonzero(ok_a)
    j = to_b[i]
    mutual = ok_b[j] & (to_a[j] == i)
    return np.stack([i[mutual], j[mutual]], axis=1).astype(np.int64)


def inliers(src: np.ndarray, dst: np.ndarray) -> int:
    """Inliers of a MAGSAC++ homography between matched points (0 under 4 matches)."""
    if len(src) < 4:
        return 0
    import cv2  # here: the other index actors never load OpenCV (tens of MB a process)

    _, mask = cv2.findHomography(
        src.astype(np.float32),
        dst.astype(np.float32),
        cv2.USAC_MAGSAC,
        4.0,
        confidence=0.999,
        maxIters=2000,
    )
    return int(mask.sum()) if mask is not None else 0
