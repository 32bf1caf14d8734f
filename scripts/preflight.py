"""Check a Serve config before ``serve run`` starts anything (``make serve`` runs it):

    python scripts/preflight.py configs/serve.yaml

Each application's args must be valid and, when ``http_options.host`` is not loopback, name
API keys (or ``allow_unauthenticated: true``). ``build_app`` checks the same against the
running Serve's host, but there a refusal only marks the app failed while ``serve run``
keeps running; here it stops ``make serve`` at once, with the reason. Exit status 2 then.

Its ``deployments:`` entries must name deployments the app builds and options Serve knows:
Serve 2.60 ignores a misspelt option (``max_queued_request``, ``autoscaling_config:
{max_replica: 4}``) without a word, so that a limit a user set would silently not hold.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from deployments import auth
from deployments.config import AppArgs

#: ``user_config`` of the extractor deployments (``ExtractorDeployment.reconfigure``).
EXTRACTOR_USER_CONFIG = {"max_batch_size", "batch_wait_timeout_s"}


def deployment_problems(app: dict[str, Any], args: AppArgs) -> list[str]:
    """What is wrong with an application's ``deployments:`` entries that Serve would not
    say: a deployment the app does not build, or an option name Serve does not know."""
    from ray.serve.config import AutoscalingConfig, BackpressureConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    nested = {
        "ray_actor_options": set(RayActorOptionsSchema.model_fields),
        "autoscaling_config": set(AutoscalingConfig.model_fields),
        "backpressure_config": set(BackpressureConfig.model_fields),
    }
    built = {"Ingress", *args.deployments}
    problems = []
    for entry in app.get("deployments") or []:
        name = entry.get("name")
        if name not in built:
            problems.append(f"deployment {name!r}: the app has no such deployment {sorted(built)}")
            continue
        known = {**nested, "user_config": EXTRACTOR_USER_CONFIG if name != "Ingress" else set()}
        for key, value in entry.items():
            if key not in DeploymentSchema.model_fields:
                problems.append(f"deployment {name!r}: unknown option {key!r}")
            elif key in known and isinstance(value, dict):
                problems += [
                    f"deployment {name!r}: unknown option {key}.{inner}"
                    for inner in value
                    if inner not in known[key]
                ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check the config; 0 when ``serve run`` may start it, 2 (and why, on stderr) if not."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="the Serve config file")
    ns = p.parse_args(argv)
    # Ray's own model, so that an unset host gets Ray's default (every interface under
    # HAProxy), as `serve run` will.
    from ray.serve.config import HTTPOptions

    try:
        with open(ns.config) as f:
            cfg = yaml.safe_load(f) or {}
        host = HTTPOptions(**(cfg.get("http_options") or {})).host
        problems = []
        for app in cfg.get("applications") or []:
            args = AppArgs.model_validate(app.get("args") or {})
            auth.startup(args.api_keys_file, args.allow_unauthenticated, host)
            problems += deployment_problems(app, args)
    except (OSError, yaml.YAMLError, ValidationError, auth.AuthConfigError) as exc:
        print(f"serve: {ns.config}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"serve: {ns.config}: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
