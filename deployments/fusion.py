"""Weighted reciprocal-rank fusion of per-feature result lists (Ray-free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Hit = tuple[int, float]


@dataclass
class Fused:
    """One fused result: the image, its fused score and where each source ranked it."""

    image_id: int
    score: float
    duplicate: bool = False
    matches: dict[str, dict[str, Any]] = field(default_factory=dict)


def fuse(
    lists: Mapping[str, list[Hit]],
    weights: Mapping[str, float],
    rank_constant: float = 60.0,
    duplicate_source: str | None = "phash",
    duplicate_threshold: float | None = None,
) -> list[Fused]:
    """Fuse ranked lists: score = sum over sources of weight / (rank_constant + rank).

    Ranks start at 1. Images that ``duplicate_source`` found within ``duplicate_threshold``
    are near-duplicates and come first (closest first), then the rest by score; ties break on
    the smaller id so that the order is deterministic.
    """
    fused: dict[int, Fused] = {}
    for source, hits in lists.items():
        weight = weights.get(source, 1.0)
        for rank, (image_id, distance) in enumerate(hits, start=1):
            item = fused.setdefault(image_id, Fused(image_id, 0.0))
            item.score += weight / (rank_constant + rank)
            item.matches[source] = {"rank": rank, "distance": distance}
            if (
                source == duplicate_source
                and duplicate_threshold is not None
                and distance <= duplicate_threshold
            ):
                item.duplicate = True

    def order(item: Fused) -> tuple[int, float, float, int]:
        if item.duplicate:
            assert duplicate_source is not None
            return (0, item.matches[duplicate_source]["distance"], -item.score, item.image_id)
        return (1, 0.0, -item.score, item.image_id)

    return sorted(fused.values(), key=order)
