"""An app's actors: their names, the settings an index is made with, and getting or
creating them (named, detached, restartable, each on its recorded node:
``index_actors/placement.py``). Used by the index client."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index_actors import shards
from index_actors.actor import IndexActor
from index_actors.kinds import KINDS
from index_actors.placement import HEAD, Layout, Placement, head_options
from index_actors.store import Catalog

log = logging.getLogger(__name__)


def actor_name(app: str, role: str) -> str:
    """Ray name of an app's actor: ``role`` is ``catalog`` or ``index:<feature>``."""
    return f"{app}:{role}"


@dataclass(frozen=True)
class IndexSpec:
    """One feature's index as the config sets it."""

    kind: str
    #: Width of a feature; a string where it cannot be known (why: an unknown model name).
    dim: int | str
    options: dict[str, Any] = field(default_factory=dict)
    #: Index actors the feature's images are spread over (``index_actors.shards``).
    shards: int = 1


# Actors survive the Serve application (detached), come back after a crash (max_restarts)
# and replay a call that was in flight when they died (max_task_retries): every method is
# safe to repeat, since re-adding an id replaces it. A few retries, not infinite ones: a call
# that itself kills the actor (out of memory) must end in an error, not a restart loop.
_ACTOR_OPTIONS: dict[str, Any] = {
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 3,
}


def _current(makers: list[Any], wanted: list[dict[str, Any]], wait_s: float) -> list[Any]:
    """The named actors ``makers[i]()`` get or create, each replaced if it was made with
    other settings than ``wanted[i]``.

    Detached actors outlive the app: after a config change (another data_dir, metric or
    index option) the old one would otherwise keep serving the old store. Replacing it loses
    nothing, since every index is derived from its store. An actor that does not answer
    within ``wait_s`` (its node is down) is kept as it is: it serves once its node returns.
    """
    import ray

    actors = [make() for make in makers]
    refs = [a.config.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    for i, ref in enumerate(refs):
        if ref not in ready:
            log.warning("actor %d of %d has not started (its node is down?)", i, len(refs))
        elif ray.get(ref) != wanted[i]:
            ray.kill(actors[i], no_restart=True)
            actors[i] = makers[i]()
    return actors


def index_shards(
    app_name: str,
    feature: str,
    spec: IndexSpec,
    data_dir: str,
    layout: Layout,
    placement: Placement,
    snapshot_interval_s: float = 30.0,
    num_cpus: float = 0.0,
    wait_s: float = 30.0,
    carry: dict[str, bytes] | None = None,
) -> list[Any]:
    """Get or create the index actors of one feature's shards (``layout``) of an app, each
    on its recorded node; ``carry``: files a new shard starts from (``IndexActor``)."""
    import ray

    assert isinstance(spec.dim, int)
    count = layout.shards
    paths = [str(shards.directory(data_dir, feature, i, count)) for i in range(count)]

    def maker(i: int) -> Any:
        return lambda: (
            ray.remote(IndexActor)
            .options(
                name=actor_name(app_name, shards.role(feature, i, count)),
                num_cpus=num_cpus,
                # Threads, so that searches and adds go on while adopt() fills a trained
                # index; the index's own lock keeps it a single writer.
                max_concurrency=8,
                **placement.options(layout.nodes[i]),
                **_ACTOR_OPTIONS,
            )
            .remote(
                spec.kind,
                paths[i],
                spec.dim,
                spec.options,
                snapshot_interval_s,
                carry,
                layout.nodes[i],
            )
        )

    wanted = [
        IndexActor.settings_of(spec.kind, paths[i], spec.dim, spec.options, layout.nodes[i])
        for i in range(count)
    ]
    actors = _current([maker(i) for i in range(count)], wanted, wait_s)
    # A reused actor keeps its index; a changed live setting (nprobe, aqe) applies in place
    # (an actor still starting applies it when it does).
    refs = [a.configure.remote(KINDS[spec.kind].live(spec.options)) for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    ray.get(ready)
    return actors


def catalog_actor(app_name: str, data_dir: str, num_cpus: float = 0.0) -> Any:
    """Get or create the catalog actor (id <-> file name, shard layouts) of an app, on this
    data_dir of the head node."""
    import ray

    path = Path(data_dir) / "catalog"

    def make() -> Any:
        return (
            ray.remote(Catalog)
            .options(
                name=actor_name(app_name, "catalog"),
                num_cpus=num_cpus,
                **head_options(),
                **_ACTOR_OPTIONS,
            )
            .remote(path)
        )

    return _current([make], [{"path": str(path)}], 60.0)[0]


def index_actor(
    app_name: str,
    feature: str,
    kind: str,
    data_dir: str,
    dim: int,
    options: dict[str, Any] | None = None,
) -> Any:
    """The index actor of a one-shard feature, on the head (tests, benchmarks)."""
    spec = IndexSpec(kind, dim, options or {})
    return index_shards(app_name, feature, spec, data_dir, Layout(1, [HEAD]), Placement())[0]
