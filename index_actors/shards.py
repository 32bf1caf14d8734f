"""Shards of a feature's index: which shard owns an image, where a shard lives and what it is
called, and how the hits of every shard merge into one list. Ray-free.

One shard (the default) is the layout from before shards existed: the actor
``<app>:index:<feature>`` over ``<data_dir>/<feature>``. With N > 1, shard i is
``<app>:index:<feature>:<i>/<N>`` over ``<data_dir>/<feature>/shards-<N>/<i>``: a layout per N,
so that resharding fills a new one from the old without touching it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from index_actors.interface import Hit, reason

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


def retire(data_dir: str | Path, feature: str, shard: int, shards: int, stamp: str) -> Path:
    """Move a shard's files aside (a reshard has copied them): to
    ``<feature>/retired-<N>-<stamp>/<i>``; returns where. The one-shard layout is the feature
    folder's own files, moved store last: until the store has moved, the layout is found."""
    base = Path(data_dir) / feature
    source = directory(data_dir, feature, shard, shards)
    to = base / f"retired-{shards}-{stamp}" / str(shard)
    to.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        return to
    entries = [e for e in source.iterdir() if not e.name.startswith(("shards-", "retired-"))]
    for entry in sorted(entries, key=lambda e: e.name == "lmdb"):
        entry.rename(to / entry.name)
    if shards > 1:
        source.rmdir()
        with contextlib.suppress(OSError):  # other shards of the layout on this node
            source.parent.rmdir()
    return to


def other_layouts(data_dir: str | Path, feature: str, shards: int) -> dict[int, int]:
    """Layouts of a feature in this data directory other than the ``shards`` one that hold
    images: shard count -> images."""
    return {c: n for c, n in layouts_here(data_dir, feature).items() if c != shards}


def layouts_here(data_dir: str | Path, feature: str) -> dict[int, int]:
    """The layouts of a feature in this data directory (on this machine) that hold images:
    shard count -> images."""
    from index_actors.store import FeatureStore

    base = Path(data_dir) / feature
    found: dict[int, list[Path]] = {1: [base]}
    for folder in base.glob("shards-*"):
        if folder.name.removeprefix("shards-").isdigit():
            found[int(folder.name.removeprefix("shards-"))] = list(folder.iterdir())
    out = {}
    for count, dirs in found.items():
        stores = [d / "lmdb" for d in dirs if (d / "lmdb" / "data.mdb").exists()]
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


def combined(described: list[Any]) -> dict[str, Any]:
    """One description of a sharded index: shard 0's settings, the counts summed, and each
    shard's own description (or its error)."""
    parts = [d if not isinstance(d, BaseException) else {"error": reason(d)} for d in described]
    good = [d for d in parts if "error" not in d]
    out: dict[str, Any] = dict(good[0]) if good else {}
    if any(d.get("training") for d in good):  # each shard trains itself on its own
        out["training"] = True
    if len(good) == len(parts):
        out["count"] = sum(d.get("count", 0) for d in parts)
    else:
        out.pop("count", None)
        out["error"] = "; ".join(
            f"shard {i}/{len(parts)}: {d['error']}" for i, d in enumerate(parts) if "error" in d
        )
    return {**out, "shards": parts}
