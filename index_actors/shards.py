"""Shards of a feature's index: which shard owns an image, where a shard lives and what it is
called, and how the hits of every shard merge into one list. Ray-free.

One shard (the default) is the layout from before shards existed: the actor
``<app>:index:<feature>`` over ``<data_dir>/<feature>``. With N > 1, shard i is
``<app>:index:<feature>:<i>/<N>`` over ``<data_dir>/<feature>/shards-<N>/<i>``: a layout per N,
so that resharding fills a new one from the old without touching it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from index_actors.interface import Hit

_MASK = (1 << 64) - 1


def owner(image_id: int, shards: int) -> int:
    """The shard that owns an image: Lamping and Veach's jump consistent hash of the id
    (after a 64-bit mix, since ids are often sequential). Stable, even, and from N to N + 1
    shards only 1/(N + 1) of the images move."""
    if shards <= 1:
        return 0
    key = (image_id * 0x9E3779B97F4A7C15) & _MASK
    bucket, jump = -1, 0
    while jump < shards:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def by_owner(ids: Sequence[int], shards: int) -> dict[int, list[int]]:
    """Positions in ``ids`` grouped by owning shard (in order within each)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for j, image_id in enumerate(ids):
        groups[owner(image_id, shards)].append(j)
    return dict(groups)


def role(feature: str, shard: int, shards: int) -> str:
    """The actor role of a shard (see the module docstring)."""
    return f"index:{feature}" if shards == 1 else f"index:{feature}:{shard}/{shards}"


def directory(data_dir: str | Path, feature: str, shard: int, shards: int) -> Path:
    """The data directory of a shard (see the module docstring)."""
    base = Path(data_dir) / feature
    return base if shards == 1 else base / f"shards-{shards}" / str(shard)


def other_layouts(data_dir: str | Path, feature: str, shards: int) -> dict[int, int]:
    """Layouts of a feature other than the ``shards`` one that hold images: shard count ->
    images. Changing the count must not hide them behind empty new shards."""
    from index_actors.store import FeatureStore

    base = Path(data_dir) / feature
    found: dict[int, list[Path]] = {1: [base]}
    for folder in base.glob("shards-*"):
        if folder.name.removeprefix("shards-").isdigit():
            found[int(folder.name.removeprefix("shards-"))] = list(folder.iterdir())
    out = {}
    for count, dirs in found.items():
        stores = [d / "lmdb" for d in dirs if (d / "lmdb" / "data.mdb").exists()]
        if count != shards and stores:
            images = 0
            for path in stores:
                store = FeatureStore(path, map_size=1 << 20)  # LMDB grows it to the file's
                try:
                    images += store.count()
                finally:
                    store.close()
            if images:
                out[count] = images
    return out


def merge(lists: Iterable[list[Hit]], k: int | None) -> list[Hit]:
    """One ranked list from the shards' ranked lists: by distance, then id, as one index
    ranks them. Each image lives in one shard, so nothing is counted twice; each shard
    returned its own top ``k``, so the merged top ``k`` is the unsharded one."""
    hits = sorted((h for hits in lists for h in hits), key=lambda h: (h[1], h[0]))
    return hits[:k] if k is not None else hits
