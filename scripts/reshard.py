"""Reshard: move every feature's images into the shard count the config now asks for.

    python scripts/reshard.py [--config configs/serve.yaml] [--app imgsearch] [--features ...]

Set ``shards`` (or a feature's own ``shards``) in the config, stop the app (``serve shutdown``,
or ``ray stop`` on one machine), run this, start the app again. On a running Ray cluster the
shards are moved by the app's own index actors on the nodes that hold them, and the new ones
spread over the data nodes up now; with no cluster running, in this process. Each feature is
moved from the layout the catalog records (``index_actors/reshard.py``); an interrupted run
is finished by running it again. Features already in the asked layout are left alone. Text
features in PostgreSQL are not sharded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from deployments.config import AppArgs, load_app_args
from index_actors.actor import LocalActor
from index_actors.actors import actor_name, catalog_actor
from index_actors.placement import data_nodes, spread
from index_actors.reshard import LocalOpener, Opener, RayOpener, reshard
from index_actors.store import Catalog


def _connect(address: str) -> bool:
    """Join a running Ray cluster (a caller's session, as in tests, is used as it is)."""
    import ray

    if ray.is_initialized():
        return True
    # ray.init retries for minutes against a cluster that left its address file behind
    # (a crash): a port that answers is a cluster that runs.
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError):
        return False
    if found is None:
        return False
    host, port = found.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    ray.init(address=found, namespace="serve", logging_level=logging.WARNING)
    return True


def _app_actors(app: str) -> tuple[list[str], list[str]]:
    """(Serve replicas of the app, the app's named index and catalog actors)."""
    from ray.util import list_named_actors

    named = [a["name"] for a in list_named_actors(all_namespaces=True)]
    replicas = [n for n in named if n.startswith(f"SERVE_REPLICA::{app}#")]
    return replicas, [n for n in named if n.startswith(actor_name(app, ""))]


def _kill(names: list[str]) -> None:
    import ray

    for name in names:
        with contextlib.suppress(ValueError):  # gone meanwhile
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def main(argv: list[str] | None = None) -> int:
    """Reshard from the command line; prints what moved where and how long it took."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/serve.yaml", help="the app's Serve config")
    p.add_argument("--app", default="imgsearch", help="application name in the config")
    p.add_argument("--features", help="comma list (default: every enabled feature)")
    p.add_argument("--address", default="auto", help="Ray cluster the app runs on")
    ns = p.parse_args(argv)
    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"reshard: {ns.config}: {exc}", file=sys.stderr)
        return 2
    names = [f.strip() for f in ns.features.split(",")] if ns.features else args.enabled
    if wrong := [f for f in names if f not in args.enabled]:
        print(f"reshard: {wrong} not enabled in {ns.config}", file=sys.stderr)
        return 2
    on_ray = _connect(ns.address)
    if on_ray:
        replicas, leftovers = _app_actors(ns.app)
        if replicas:
            print(
                f"reshard: the app {ns.app!r} is running ({replicas[0]}, ...): stop it first "
                "(serve shutdown), or its writes would be lost",
                file=sys.stderr,
            )
            return 2
        _kill(leftovers)  # the stopped app's detached actors hold its stores open
    try:
        asyncio.run(_run(args, names, on_ray))
    except (TimeoutError, ValueError) as exc:
        print(f"reshard: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(args: AppArgs, names: list[str], on_ray: bool) -> None:
    data_dir = str(args.data_path())
    nodes = data_nodes(args.data_label) if on_ray else []
    catalog = (
        catalog_actor(args.name, data_dir)
        if on_ray
        else LocalActor(Catalog(Path(data_dir) / "catalog"))
    )
    specs = args.index_specs(names)
    for name in args.enabled:
        spec = specs.get(name)
        if spec is None:  # not asked for
            continue
        if isinstance(spec.dim, str):
            print(f"{name}: skipped ({spec.dim})")
            continue
        opener: Opener = (
            RayOpener(args.name, data_dir, name, spec, args.placement)
            if on_ray
            else LocalOpener(data_dir, name, spec)
        )
        to = spread(spec.shards, nodes, args.shared_data_dir)
        with tqdm(unit="img", desc=f"{name} -> {spec.shards} shard(s)") as bar:

            def advance(moved: int, bar: tqdm[Any] = bar) -> None:
                bar.update(moved - bar.n)

            done = await reshard(catalog, opener, data_dir, name, to, advance)
        moved = f"{done['moved']} image(s) from {done['from']} shard(s)" if done["moved"] else ""
        print(
            f"{name}: {moved or 'already in ' + str(spec.shards) + ' shard(s)'}"
            f" in {done['seconds']:.1f} s"
        )
    if not on_ray:
        catalog._obj.close()


if __name__ == "__main__":
    sys.exit(main())
