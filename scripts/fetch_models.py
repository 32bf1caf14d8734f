"""Fill the local model cache with the weights of the app's features (models, HardNet8, the
captioner, the Places365 files).

    python scripts/fetch_models.py                  # every feature in configs/serve.yaml
    python scripts/fetch_models.py clip caption     # just these
    python scripts/fetch_models.py --check          # offline: what is there, what is missing

Runs each extractor's own loading code with hub downloads allowed, so what lands in the cache
(the Hugging Face hub cache that timm and open_clip use, ``HF_HOME``) is exactly what the app
looks up later with ``HF_HUB_OFFLINE=1``. Copy that cache to a machine without internet to
serve there. Weights shipped inside a package (EfficientNet-Lite0) need no fetching.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from deployments.config import load_app_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("features", nargs="*", help="features (default: all enabled)")
    p.add_argument("--config", default="configs/serve.yaml", help="the app's Serve config")
    p.add_argument("--app", default="imgsearch", help="application name in the config")
    p.add_argument("--check", action="store_true", help="only report, offline")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load (and so fetch) each model; exit status 1 when any is still unavailable."""
    ns = parse_args(argv)
    # Before anything imports huggingface_hub, which reads the setting once.
    os.environ["HF_HUB_OFFLINE"] = "1" if ns.check else "0"
    from extractors import WeightsUnavailable, build_extractor

    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"fetch_models: {ns.config}: {exc}", file=sys.stderr)
        return 2
    # Every enabled feature: load() is a no-op for the weight-free ones (local with RootSIFT),
    # and fetches for the rest (local with HardNet8 too).
    # By name, a feature configured but not yet enabled too: fetch first, then enable it.
    wanted = ns.features or args.enabled
    wrong = [f for f in wanted if f not in args.features]
    if wrong:
        print(
            f"fetch_models: {wrong} are not in the config: {list(args.features)}", file=sys.stderr
        )
        return 2
    missing = 0
    for name in wanted:
        options = args.extractor_options(name)
        try:
            extractor = build_extractor(name, options)
            extractor.load()
        except WeightsUnavailable as exc:
            missing += 1
            print(f"{name}: missing: {exc}")
        else:
            # OCR names its engine: rapidocr's models ship in its package, Tesseract has none.
            engine = getattr(extractor, "engine_name", None)
            what = options.get("model") or options.get("descriptor") or engine
            print(f"{name}: ok ({what or 'no weights needed'})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
