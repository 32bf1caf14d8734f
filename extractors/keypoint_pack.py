"""The packed form of one image's local features (a count, the keypoints, the descriptors),
apart from the extractor: the index actors read it without loading OpenCV or numba."""

from __future__ import annotations

import numpy as np

DESC = 128
HEADER = 4  # uint32 keypoint count


def pack(points: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """Keypoints (n x 2 float32) and descriptors (n x 128 uint8) as one uint8 array."""
    n = len(points)
    return np.concatenate(
        [
            np.array([n], "<u4").view(np.uint8),
            np.ascontiguousarray(points, "<f4").view(np.uint8).ravel(),
            np.ascontiguousarray(descriptors, np.uint8).ravel(),
        ]
    )


def keypoint_count(feature: np.ndarray) -> int:
    """How many keypoints a packed feature holds (its header)."""
    return int(feature[:HEADER].view("<u4")[0])


def unpack(feature: np.ndarray | bytes) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``pack`` (zero padding after the records is ignored)."""
    raw = np.frombuffer(feature, np.uint8) if isinstance(feature, bytes) else feature
    n = keypoint_count(raw)
    points = raw[HEADER : HEADER + 8 * n].view("<f4").reshape(n, 2)
    descriptors = raw[HEADER + 8 * n : HEADER + 8 * n + DESC * n].reshape(n, DESC)
    return points, descriptors
