"""Check a Serve config before ``serve run`` starts anything (``make serve`` runs it):

    python scripts/preflight.py configs/serve.yaml

Each application's args must be valid and, when ``http_options.host`` is not loopback, name
API keys (or ``allow_unauthenticated: true``). ``build_app`` checks the same against the
running Serve's host, but there a refusal only marks the app failed while ``serve run``
keeps running; here it stops ``make serve`` at once, with the reason. Exit status 2 then.
"""

from __future__ import annotations

import argparse
import sys

import yaml
from pydantic import ValidationError

from deployments import auth
from deployments.config import AppArgs


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
        for app in cfg.get("applications") or []:
            args = AppArgs.model_validate(app.get("args") or {})
            auth.startup(args.api_keys_file, args.allow_unauthenticated, host)
    except (OSError, yaml.YAMLError, ValidationError, auth.AuthConfigError) as exc:
        print(f"serve: {ns.config}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
