"""Binds the application graph from typed settings; ``serve run configs/serve.yaml`` calls it."""

from typing import Any

from ray.serve import Application

from deployments.config import AppArgs
from deployments.extractor import ExtractorDeployment
from deployments.ingress import Ingress


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """One extractor deployment per enabled feature, composed by the ingress.

    Each feature's width comes from its extractor's configuration (no weights loaded), so
    the ingress can open the index of a model whose weights are still missing.

    ``serve run`` hands over the YAML ``args`` as a dict; tests pass an ``AppArgs``.
    """
    args = AppArgs.model_validate(args)
    extractors = {
        name: ExtractorDeployment.options(name=f"extract_{name}").bind(  # type: ignore[attr-defined]
            name, args.extractor_options(name)
        )
        for name in args.enabled
    }
    return Ingress.bind(args, extractors, args.dims())  # type: ignore[attr-defined]
