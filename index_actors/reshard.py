"""Resharding: rebuild a feature's shards for another shard count from the LMDB stores of the
layout it is in now (Ray-free; ``scripts/reshard.py`` is the command, with the app stopped).

Every stored feature is read from the old layout's stores, sent to its owner under the new
count (``shards.owner``) and added to that shard's index, which writes its own store and
builds its FAISS index; trained artefacts and live settings are copied into each new shard
first. Only when every shard is written and closed is the old layout moved aside (to
``<feature>/retired-<count>-<time>``), so an interrupted run leaves both, the app refuses
to open the feature (``shards.other_layouts``), and running it again redoes the copy:
re-adding an id replaces it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index_actors import shards
from index_actors.kinds import KINDS
from index_actors.store import FeatureStore

#: Features read and written per step.
CHUNK = 10_000


def _layout_dirs(base: Path, count: int) -> list[Path]:
    return [shards.directory(base.parent, base.name, i, count) for i in range(count)]


def reshard(
    data_dir: str | Path,
    feature: str,
    kind: str,
    dim: int,
    options: dict[str, Any],
    to: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Move every image of ``feature`` into the ``to``-shard layout; returns what was moved
    (per old layout) and how long it took. Nothing to do when no other layout holds images."""
    started = time.perf_counter()
    base = Path(data_dir) / feature
    sources = shards.other_layouts(data_dir, feature, to)
    if not sources:
        return {"feature": feature, "moved": {}, "seconds": 0.0}
    source_dirs = [d for count in sources for d in _layout_dirs(base, count)]
    targets = _layout_dirs(base, to)
    for target in targets:  # the trained index and live settings travel with the data
        target.mkdir(parents=True, exist_ok=True)
        for name in ("trained.npz", "live.json"):
            found = next((d / name for d in source_dirs if (d / name).exists()), None)
            if found is not None and not (target / name).exists():
                shutil.copy2(found, target / name)
    the_kind = KINDS[kind]
    indexes = [the_kind.open(t, dim, **options) for t in targets]
    moved = 0
    try:
        for source in source_dirs:
            if not (source / "lmdb" / "data.mdb").exists():
                continue
            store = FeatureStore(source / "lmdb")
            try:
                batch: list[tuple[int, Any]] = []
                for image_id, raw in store.items():
                    batch.append((image_id, the_kind.stored_feature(bytes(raw))))
                    if len(batch) >= CHUNK:
                        moved += _write(indexes, batch)
                        batch = []
                        if progress:
                            progress(moved)
                moved += _write(indexes, batch)
            finally:
                store.close()
    finally:
        for index in indexes:
            index.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for count in sources:
        _retire(base, count, base / f"retired-{count}-{stamp}")
    return {"feature": feature, "moved": sources, "seconds": time.perf_counter() - started}


def _write(indexes: list[Any], batch: list[tuple[int, Any]]) -> int:
    """Add a batch to the shards that own its images."""
    ids = [i for i, _ in batch]
    for shard, positions in shards.by_owner(ids, len(indexes)).items():
        indexes[shard].add([ids[p] for p in positions], [batch[p][1] for p in positions])
    return len(batch)


def _retire(base: Path, count: int, to: Path) -> None:
    """Move an old layout aside (the one-shard layout is the feature folder's own files)."""
    to.mkdir(parents=True)
    if count == 1:
        # The store last: until it has moved, the layout is still found, and a rerun
        # finishes the move (the copy before it only replaces what it wrote).
        entries = [e for e in base.iterdir() if not e.name.startswith(("shards-", "retired-"))]
        for entry in sorted(entries, key=lambda e: e.name == "lmdb"):
            entry.rename(to / entry.name)
    else:
        (base / f"shards-{count}").rename(to / f"shards-{count}")
