"""Reshard: move every feature's images into the shard count the config now asks for.

    python scripts/reshard.py [--config configs/serve.yaml] [--app imgsearch] [--features ...]

Set ``shards`` (or a feature's own ``shards``) in the config, stop the app (``ray stop``: its
index actors must not write meanwhile), run this, start the app again. Each feature is
rebuilt from the LMDB stores of the layout it is in (``index_actors/reshard.py``); an
interrupted run is finished by running it again. Features already in the asked layout are
left alone. Text features in PostgreSQL are not sharded.
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml
from tqdm import tqdm

from deployments.config import load_app_args
from index_actors.reshard import reshard


def _running_actors(app: str, address: str) -> list[str]:
    """Named actors of the app on a running Ray cluster (none when no cluster runs)."""
    import ray
    from ray.util import list_named_actors

    connected = ray.is_initialized()  # a caller's session (tests): use it, leave it up
    if not connected:
        try:
            ray.init(address=address, namespace="serve", logging_level=logging.WARNING)
        except ConnectionError:
            return []
    try:
        return [
            a["name"]
            for a in list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith(f"{app}:")
        ]
    finally:
        if not connected:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Reshard from the command line; prints what moved where and how long it took."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/serve.yaml", help="the app's Serve config")
    p.add_argument("--app", default="imgsearch", help="application name in the config")
    p.add_argument("--features", help="comma list (default: every enabled feature)")
    p.add_argument("--address", default="auto", help="Ray cluster to check for the app")
    ns = p.parse_args(argv)
    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"reshard: {ns.config}: {exc}", file=sys.stderr)
        return 2
    if running := _running_actors(args.name, ns.address):
        print(
            f"reshard: the app's index actors are running ({', '.join(running[:3])}, ...): "
            "stop the app first (.venv/bin/ray stop), or their writes would be lost",
            file=sys.stderr,
        )
        return 2
    names = [f.strip() for f in ns.features.split(",")] if ns.features else args.enabled
    if wrong := [f for f in names if f not in args.enabled]:
        print(f"reshard: {wrong} not enabled in {ns.config}", file=sys.stderr)
        return 2
    for name, spec in args.index_specs(names).items():
        if isinstance(spec.dim, str):
            print(f"{name}: skipped ({spec.dim})")
            continue
        with tqdm(unit="img", desc=f"{name} -> {spec.shards} shard(s)") as bar:

            def advance(moved: int, bar: tqdm = bar) -> None:
                bar.update(moved - bar.n)

            done = reshard(
                args.data_path(), name, spec.kind, spec.dim, spec.options, spec.shards, advance
            )
        moved = ", ".join(f"{c} image(s) from {n} shard(s)" for n, c in done["moved"].items())
        print(
            f"{name}: {moved or 'already in ' + str(spec.shards) + ' shard(s)'}"
            f" in {done['seconds']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
