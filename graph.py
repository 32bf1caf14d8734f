"""Binds the application graph from typed settings; ``serve run configs/serve.yaml`` calls it.

Every component is here: one extractor deployment per group of enabled features (a feature
of its own by default), one index actor per feature plus the catalog (named, detached Ray
actors, got or created with their settings), and the ingress that composes them.
"""

from typing import Any

from ray.serve import Application

from deployments import auth
from deployments.config import AppArgs
from deployments.extractor import ExtractorDeployment, models_without_weights
from deployments.ingress import Ingress, serve_http_host
from index_actors.client import IndexClient


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The extractor deployments, the index actors and the ingress over them.

    ``serve run`` hands over the YAML ``args`` as a dict; tests pass an ``AppArgs``. Each
    feature's width comes from its extractor's configuration (no weights loaded). A model
    whose weights are missing is answered "unavailable" by the ingress without loading its
    model code, and its index starts no actor unless it holds images from before (a
    redeploy once the weights are there opens it). An exposed HTTP host without API keys
    stops it here (``auth.AuthConfigError``, naming the reason).
    """
    args = AppArgs.model_validate(args)
    # Refuse before any actor starts: an exposed host needs keys (``deployments/auth.py``).
    # The key file resolved here (the environment may override it) is the one every
    # ingress replica reads, wherever it runs.
    keys = auth.startup(args.api_keys_file, args.allow_unauthenticated, serve_http_host())
    args = args.model_copy(update={"api_keys_file": str(keys) if keys else None})
    missing = models_without_weights(args)
    extractors = {
        deployment: ExtractorDeployment.options(name=deployment).bind(  # type: ignore[attr-defined]
            names,
            {n: args.extractor_options(n) for n in names},
            {n: missing[n] for n in names if n in missing},
        )
        for deployment, names in args.deployments.items()
    }
    indexes = IndexClient.open(
        args.name,
        str(args.data_path()),
        args.index_specs(),
        args.snapshot_interval_s,
        args.index_actor_cpus,
        args.shard_timeout_s,
        args.placement,
        args.write_timeout_s,
        dormant=missing,
    )
    return Ingress.bind(args, extractors, indexes, missing)  # type: ignore[attr-defined]
