"""Descriptor id -> image id over sorted id ranges: how the keypoint index maps a matched
descriptor to its image (each image's descriptors have consecutive ids). Ray-free."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class RangeMap:
    """Descriptor id -> image id over sorted, disjoint ranges [start, end)."""

    def __init__(self) -> None:
        self.starts = np.empty(0, np.int64)
        self.ends = np.empty(0, np.int64)
        self.images = np.empty(0, np.int64)

    def load(self, entries: Iterable[tuple[int, int, int]]) -> None:
        """Replace everything by (image id, start, count) entries."""
        rows = sorted((s, s + n, i) for i, s, n in entries if n)
        arr = np.array(rows, np.int64).reshape(-1, 3)
        self.starts, self.ends, self.images = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()

    def add(self, image_id: int, start: int, count: int) -> None:
        """A new range (ids only grow, so it goes last)."""
        if count:
            assert not len(self.starts) or start >= self.ends[-1]
            self.starts = np.append(self.starts, start)
            self.ends = np.append(self.ends, start + count)
            self.images = np.append(self.images, image_id)

    def remove(self, start: int) -> None:
        """Forget the range that begins at ``start``."""
        at = np.searchsorted(self.starts, start)
        if at < len(self.starts) and self.starts[at] == start:
            keep = np.arange(len(self.starts)) != at
            self.starts, self.ends, self.images = (
                self.starts[keep],
                self.ends[keep],
                self.images[keep],
            )

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Image id of each descriptor id; -1 where none (deleted, or FAISS's -1)."""
        at = np.searchsorted(self.starts, ids, side="right") - 1
        ok = (at >= 0) & (ids >= 0)
        at = np.clip(at, 0, max(len(self.starts) - 1, 0))
        if len(self.starts):
            ok &= ids < self.ends[at]
            return np.where(ok, self.images[at], -1)
        return np.full(len(ids), -1, np.int64)

    @property
    def descriptors(self) -> int:
        """How many descriptor ids the ranges cover."""
        return int((self.ends - self.starts).sum())
