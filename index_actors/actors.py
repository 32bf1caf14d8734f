"""An app's actors: their names, the settings an index is made with, and getting or
creating them (named, detached, restartable). Used by the index client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index_actors import shards
from index_actors.actor import IndexActor
from index_actors.kinds import KINDS
from index_actors.store import Catalog


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


def _current(make: Any, wanted: dict[str, Any]) -> Any:
    """The named actor ``make()`` gets or creates, replaced if it was made with other settings.

    Detached actors outlive the app: after a config change (another data_dir, metric or
    index option) the old one would otherwise keep serving the old store. Replacing it loses
    nothing, since every index is derived from its store.
    """
    import ray

    actor = make()
    if ray.get(actor.config.remote()) != wanted:
        ray.kill(actor, no_restart=True)
        actor = make()
    return actor


def index_actor(
    app_name: str,
    feature: str,
    kind: str,
    data_dir: str,
    dim: int,
    options: dict[str, Any] | None = None,
    snapshot_interval_s: float = 30.0,
    num_cpus: float = 0.0,
    shard: tuple[int, int] = (0, 1),
) -> Any:
    """Get or create the index actor of one feature (``shard``: i of N) of an app."""
    import ray

    path = str(shards.directory(data_dir, feature, *shard))
    options = options or {}
    wanted = IndexActor.settings_of(kind, path, dim, options)
    actor = _current(
        lambda: (
            ray.remote(IndexActor)
            .options(
                name=actor_name(app_name, shards.role(feature, *shard)),
                num_cpus=num_cpus,
                # Threads, so that searches and adds go on while adopt() fills a trained
                # index; the index's own lock keeps it a single writer.
                max_concurrency=8,
                **_ACTOR_OPTIONS,
            )
            .remote(kind, path, dim, options, snapshot_interval_s)
        ),
        wanted,
    )
    # A reused actor keeps its index; a changed live setting (nprobe, aqe) applies in place.
    ray.get(actor.configure.remote(KINDS[kind].live(options)))
    return actor


def catalog_actor(app_name: str, data_dir: str, num_cpus: float = 0.0) -> Any:
    """Get or create the catalog actor (id <-> file name) of an app, on this data_dir."""
    import ray

    path = Path(data_dir) / "catalog"
    return _current(
        lambda: (
            ray.remote(Catalog)
            .options(name=actor_name(app_name, "catalog"), num_cpus=num_cpus, **_ACTOR_OPTIONS)
            .remote(path)
        ),
        {"path": str(path)},
    )
