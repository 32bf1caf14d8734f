"""The seed's keypoint selection, compiled (numba): imported by the local-features
extractor when it runs, so that a process that only lists the extractors never loads numba."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def select(
    xs: np.ndarray,
    ys: np.ndarray,
    width: float,
    height: float,
    max_total: int,
    per_quadrant: int,
    radius: float,
    max_neighbours: int,
) -> np.ndarray:  # pragma: no cover - compiled
    """Indices of the chosen keypoints, given in order of falling response.

    The seed's rule: at most ``per_quadrant`` per image quadrant and ``max_total`` in all;
    a candidate is skipped when a chosen keypoint within ``radius`` already has
    ``max_neighbours`` or more chosen neighbours (so no cluster eats the budget).
    """
    chosen = np.empty(max_total, np.int64)
    cx = np.empty(max_total)
    cy = np.empty(max_total)
    neighbours = np.zeros(max_total, np.int64)
    counts = np.zeros(4, np.int64)
    r2 = radius * radius
    n = 0
    for j in range(len(xs)):
        if n == max_total:
            break
        x, y = xs[j], ys[j]
        crowded = False
        for i in range(n):
            dx, dy = cx[i] - x, cy[i] - y
            if dx * dx + dy * dy < r2 and neighbours[i] >= max_neighbours:
                crowded = True
                break
        if crowded:
            continue
        q = (1 if x >= width / 2 else 0) + (2 if y >= height / 2 else 0)
        if counts[q] >= per_quadrant:
            continue
        for i in range(n):
            dx, dy = cx[i] - x, cy[i] - y
            if dx * dx + dy * dy < r2:
                neighbours[i] += 1
        chosen[n], cx[n], cy[n] = j, x, y
        counts[q] += 1
        n += 1
    return chosen[:n]
