"""Resharding: move a feature's images from the shard layout the catalog records to one of
another shard count, through the shards' own actors, so that it works wherever each shard's
files live (a data node's own disk, a shared one, this machine). ``scripts/reshard.py`` is the
command, run with the Serve app stopped. Ray-free: the actors come from an ``Opener``.

Each step is safe to repeat, so an interrupted run is finished by running it again:

1. the new layout is recorded as the old one's ``next`` (a resumed run fills the same nodes);
2. each old shard's stored features are read page by page (``IndexActor.export``) and added
   to their owners under the new count; the new shards start from the old layout's trained
   index and live settings (``IndexActor.carried``); re-adding an id replaces it;
3. the new layout is recorded, the old one as ``retiring``: the app opens the new one now;
4. each old shard moves its files aside (``IndexActor.retire``), then ``retiring`` is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from index_actors import shards
from index_actors.actor import IndexActor, LocalActor
from index_actors.actors import IndexSpec, index_shards
from index_actors.placement import HEAD, Layout, Placement, unreachable
from index_actors.writes import take_rows

#: Features read and written per step.
CHUNK = 10_000
#: How long one step may wait for a shard before the run stops (to be run again).
STEP_TIMEOUT_S = 600


class Opener(Protocol):
    """Opens the actors of a layout's shards (each on its node) and closes them."""

    def open(self, layout: Layout, carry: dict[str, bytes] | None) -> list[Any]:
        """Actor-shaped handles (``method.remote()``) of the layout's shards."""
        ...

    def close(self, actors: list[Any]) -> None:
        """Let go of them (kill the Ray actors; close local indexes)."""
        ...

    def unreachable(self, layout: Layout) -> str | None:
        """Why this opener cannot open a layout's shards where they are, or None."""
        ...


async def current_layout(catalog: Any, data_dir: str | Path, feature: str) -> Layout | None:
    """The recorded layout of a feature, or the one found in this data directory for data
    from before layouts were recorded (on this machine: the head); None when nothing is
    stored. ``ValueError`` when files of several layouts hold images."""
    raw = await catalog.layout.remote(feature)
    if raw:
        return Layout.from_dict(raw)
    here = await catalog.layouts_here.remote(feature)
    if len(here) > 1:
        raise ValueError(f"{data_dir}/{feature} holds images in several layouts: {here}")
    count = next(iter(here), None)
    return Layout(count, [HEAD] * count) if count else None


async def reshard(
    catalog: Any,
    opener: Opener,
    data_dir: str | Path,
    feature: str,
    to: Layout,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Move every image of ``feature`` into ``to.shards`` shards on ``to``'s nodes (a
    resumed run keeps the nodes it started with); returns what moved and how long it took.
    ``ValueError`` when the shards cannot be reached from here; ``TimeoutError`` when a
    shard stops answering (its node went down: bring it back and run again)."""
    started = time.perf_counter()
    now = await current_layout(catalog, data_dir, feature)
    done = {"feature": feature, "moved": 0, "from": now.shards if now else None}
    if now is not None and (why := opener.unreachable(now)):
        raise ValueError(f"{feature}: {why}")
    if now is not None and now.retiring is not None:  # step 4 of an interrupted run first
        now = await _retire(catalog, opener, data_dir, feature, now)
    if now is None or now.shards == to.shards:
        # Nothing to move: the layout is recorded as it is (a reshard to another count that
        # was interrupted is abandoned), or as the new one when nothing is stored.
        kept = Layout(now.shards, now.nodes) if now else to
        await catalog.set_layout.remote(feature, kept.to_dict())
        return {**done, "seconds": time.perf_counter() - started}
    if now.next is not None and now.next.shards == to.shards:
        to = now.next
    await catalog.set_layout.remote(feature, replace(now, next=to).to_dict())
    old: list[Any] = []
    new: list[Any] = []
    try:
        old = opener.open(Layout(now.shards, now.nodes), None)
        carry = await _step(old[0].carried.remote())
        new = opener.open(to, carry)
        # What an interrupted or abandoned copy left there (deleted since, perhaps) goes.
        await asyncio.gather(*(_step(a.clear.remote()) for a in new))
        done["moved"] = await move(old, new, progress)
        await asyncio.gather(*(_step(a.snapshot.remote()) for a in new))
    finally:
        opener.close(new)
        opener.close(old)
    now = Layout(to.shards, to.nodes, retiring=Layout(now.shards, now.nodes))
    await catalog.set_layout.remote(feature, now.to_dict())
    await _retire(catalog, opener, data_dir, feature, now)
    return {**done, "seconds": time.perf_counter() - started}


async def _retire(
    catalog: Any, opener: Opener, data_dir: str | Path, feature: str, now: Layout
) -> Layout:
    """Step 4: the ``retiring`` layout's shards move their files aside; the record drops it."""
    assert now.retiring is not None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    old: list[Any] = []
    try:
        old = opener.open(now.retiring, None)
        count = now.retiring.shards
        await asyncio.gather(
            *(
                _step(a.retire.remote(str(data_dir), feature, i, count, stamp))
                for i, a in enumerate(old)
            )
        )
    finally:
        opener.close(old)
    kept = Layout(now.shards, now.nodes)
    await catalog.set_layout.remote(feature, kept.to_dict())
    return kept


async def _step(call: Any) -> Any:
    """One call to a shard, given up after ``STEP_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(call, STEP_TIMEOUT_S)
    except TimeoutError:
        raise TimeoutError(
            f"a shard did not answer within {STEP_TIMEOUT_S} s: is its node up? Run again "
            "once it is (the reshard resumes)"
        ) from None


async def move(old: list[Any], new: list[Any], progress: Callable[[int], None] | None) -> int:
    """Every stored feature of the ``old`` shards added to its owner among ``new``."""
    moved = 0
    for actor in old:
        page = actor.export.remote(-1, CHUNK)
        while True:
            ids, features = await _step(page)
            if not ids:
                break
            page = actor.export.remote(ids[-1], CHUNK)  # read while this page is written
            await asyncio.gather(
                *(
                    _step(new[s].add.remote([ids[p] for p in pos], take_rows(features, pos)))
                    for s, pos in shards.by_owner(ids, len(new)).items()
                )
            )
            moved += len(ids)
            if progress:
                progress(moved)
    return moved


@dataclass
class LocalOpener:
    """Shards hosted in this process: one machine, no Ray running."""

    data_dir: str
    feature: str
    spec: IndexSpec

    def open(self, layout: Layout, carry: dict[str, bytes] | None) -> list[Any]:
        """See ``Opener``."""
        assert isinstance(self.spec.dim, int)
        return [
            LocalActor(
                IndexActor(
                    self.spec.kind,
                    str(shards.directory(self.data_dir, self.feature, i, layout.shards)),
                    self.spec.dim,
                    self.spec.options,
                    3600.0,
                    carry,
                )
            )
            for i in range(layout.shards)
        ]

    def close(self, actors: list[Any]) -> None:
        """See ``Opener``."""
        for actor in actors:
            actor._obj.close()

    def unreachable(self, layout: Layout) -> str | None:
        """See ``Opener``: only shards on this machine (the head) or a shared data_dir."""
        return unreachable(layout, shared=True, local=True)


@dataclass
class RayOpener:
    """The app's own shard actors, each on its recorded node of the Ray cluster."""

    app_name: str
    data_dir: str
    feature: str
    spec: IndexSpec
    placement: Placement
    #: How long a shard may take to start; a node that is down must be brought back first.
    wait_s: float = 120.0

    def open(self, layout: Layout, carry: dict[str, bytes] | None) -> list[Any]:
        """See ``Opener``; ``TimeoutError`` naming a shard whose node is not up."""
        import ray
        from ray.exceptions import GetTimeoutError

        actors = index_shards(
            self.app_name,
            self.feature,
            self.spec,
            self.data_dir,
            layout,
            self.placement,
            snapshot_interval_s=3600.0,
            wait_s=self.wait_s,
            carry=carry,
        )
        for i, actor in enumerate(actors):
            try:
                ray.get(actor.pid.remote(), timeout=self.wait_s)
            except GetTimeoutError:
                self.close(actors)
                raise TimeoutError(
                    f"shard {i} of {self.feature} ({layout.shards} shards) did not start on "
                    f"node {layout.nodes[i] or 'head'!r}: is that node up?"
                ) from None
        return actors

    def unreachable(self, layout: Layout) -> str | None:
        """See ``Opener``."""
        return unreachable(layout, shared=self.placement.shared, local=False)

    def close(self, actors: list[Any]) -> None:
        """See ``Opener``: the actors are killed (their stores are committed)."""
        import ray

        for actor in actors:
            ray.kill(actor, no_restart=True)
