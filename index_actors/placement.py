"""Where an app's actors run on a Ray cluster, and the record that keeps them there.

*Data nodes* are the nodes started with the label ``imgsearch-data=<name>`` (``ray start
--labels imgsearch-data=<name>``), a name the node keeps across restarts (its host name, say),
since Ray's node ids change. When a feature's shard layout is first created, its shards are
spread over the data nodes present, and the catalog records which node holds each shard
(``Layout``). A shard's actor may then only run on that node: a restarted shard comes back
there, or waits until the node returns, and finds its files where it left them. Without data
nodes every shard is recorded on the head (``HEAD``), as is the catalog: the single-machine
default, unchanged by workers that only run extractors.

With ``shared_data_dir`` (one filesystem mounted at the data directory on every node) no
node is recorded: shards spread over any nodes and a restarted one may come back anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The node label that marks a data node; its value names the node.
LABEL = "imgsearch-data"
#: A shard recorded on the head node.
HEAD = ""
#: A shard that may run on any node (a shared data directory).
ANY = "*"


@dataclass(frozen=True)
class Layout:
    """A feature's shards and the node each lives on (``HEAD``, ``ANY`` or a data node's
    name), as the catalog records them. ``retiring``: an older layout whose files a reshard
    has still to move aside (it was interrupted)."""

    shards: int
    nodes: list[str]
    retiring: Layout | None = None
    #: The layout a reshard is filling (so that a resumed run fills the same nodes).
    next: Layout | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as the catalog keeps it (JSON)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Layout:
        """The record read back."""
        sub = {k: cls.from_dict(raw[k]) for k in ("retiring", "next") if raw.get(k)}
        return cls(int(raw["shards"]), list(raw["nodes"]), **sub)


def spread(count: int, nodes: Sequence[str], shared: bool = False) -> Layout:
    """A new layout of ``count`` shards: round robin over ``nodes`` (sorted data node names);
    all on the head without data nodes; anywhere over a shared data dir.

    Every feature starts at the first node, so that with equal shard counts an image's
    features all live on one node: a node that is down then fails only the images its
    shards own, not every image with one feature there."""
    if shared:
        return Layout(count, [ANY] * count)
    if not nodes:
        return Layout(count, [HEAD] * count)
    ordered = sorted(nodes)
    return Layout(count, [ordered[i % len(ordered)] for i in range(count)])


@dataclass(frozen=True)
class Placement:
    """How this app places its actors: the data-node label and whether the data directory
    is shared by every node."""

    label: str = LABEL
    shared: bool = False

    def options(self, node: str) -> dict[str, Any]:
        """Ray actor options that keep an actor on ``node`` (a ``Layout`` entry). A recorded
        node is kept even after ``shared`` is switched on: its files are where they are."""
        if node == ANY:
            return {"scheduling_strategy": "SPREAD"}
        if node == HEAD:
            return head_options()
        return {"label_selector": {self.label: node}}


def head_options() -> dict[str, Any]:
    """Ray actor options that keep an actor on the head node (the catalog, and shards
    without data nodes): Ray gives the head, and only it, this resource."""
    return {"resources": {"node:__internal_head__": 0.001}}


def data_nodes(label: str = LABEL) -> list[str]:
    """Names of the alive data nodes of the connected Ray cluster (sorted)."""
    import ray

    return sorted(
        {
            n["Labels"][label]
            for n in ray.nodes()
            if n.get("Alive") and label in (n.get("Labels") or {})
        }
    )


def choose(
    wanted: int,
    recorded: Layout | None,
    here: dict[int, int],
    images: int,
    new: Layout,
) -> Layout | str:
    """The layout to open a feature in, or why it cannot open.

    ``recorded``: the catalog's record; ``here``: layouts (shard count -> images) found in
    the head's data directory, for data from before layouts were recorded; ``images``: the
    catalog's image count; ``new``: a new layout of ``wanted`` shards spread over the data
    nodes (``ANY`` nodes when the data directory is shared). Another shard count than the
    recorded one needs a reshard, unless nothing is stored; so does a reshard under way or
    interrupted (its copy would miss what the app wrote meanwhile).
    """
    if recorded is None:
        if other := {c: n for c, n in here.items() if c != wanted}:
            return _held_in(other, wanted)
        # Stores of this layout here, from before records: they stay where they are.
        return Layout(wanted, [HEAD] * wanted) if wanted in here else new
    if recorded.next is not None:
        return (
            f"is being resharded from {recorded.shards} to {recorded.next.shards} shard(s), "
            "or was when it stopped: run scripts/reshard.py (again) with the app stopped"
        )
    if recorded.retiring is not None and recorded.shards != wanted:
        return (
            f"was resharded to {recorded.shards} shard(s) but its old shards are not yet "
            "moved aside: run scripts/reshard.py (again) with the app stopped"
        )
    if ANY in recorded.nodes and ANY not in new.nodes:
        return "was recorded on a shared data_dir: set shared_data_dir: true again"
    if recorded.shards == wanted:
        return recorded
    if images == 0:
        return new
    return _held_in({recorded.shards: images}, wanted)


def _held_in(layouts: dict[int, int], wanted: int) -> str:
    return (
        f"holds images in "
        f"{', '.join(f'{n} shard(s) ({c} images)' for n, c in sorted(layouts.items()))}, "
        f"not in the {wanted} this config asks for: stop the app and run "
        "scripts/reshard.py, or set shards back"
    )


def unreachable(layout: Layout, shared: bool, local: bool) -> str | None:
    """Why the shards of a layout (its ``next`` and ``retiring`` included) cannot be opened
    from here, or None: shards recorded on a shared data_dir need it shared; shards on data
    nodes need the cluster (``local``: in this process, without Ray)."""
    nodes = set(layout.nodes)
    for other in (layout.next, layout.retiring):
        nodes |= set(other.nodes) if other else set()
    if ANY in nodes and not shared:
        return "its shards were recorded on a shared data_dir: set shared_data_dir: true again"
    if local and (away := sorted(nodes - {HEAD, ANY})):
        return f"its shards live on data nodes {away}: run this on the running cluster"
    return None
