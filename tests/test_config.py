"""Settings: the shipped configs validate, and defaults mean what the docs say."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppArgs
from tests.conftest import SERVE_YAML

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(config: Path) -> None:
    cfg = yaml.safe_load(config.read_text())
    for entry in cfg["applications"]:
        args = AppArgs.model_validate(entry["args"])
        assert args.enabled == [
            *("phash", "color", "global", "clip", "local"),
            *("tags", "ocr", "caption", "thumbnail"),
        ]
        names = {d["name"] for d in entry["deployments"]}
        assert names == {"Ingress"} | set(args.deployments)
        # Every model name is one its library knows (the weights may still be missing).
        dims = args.dims()
        assert all(isinstance(d, int) for d in dims.values()), dims
        assert dims["clip"] == 512 and dims["global"] in (1280, 768)
        assert args.text_features == ["tags", "ocr", "caption"]


def test_a_wrong_model_name_is_a_reason_not_a_crash() -> None:
    args = AppArgs.model_validate({"features": {"global": {"options": {"model": "nope"}}}})
    assert args.dims() == {"global": "global: timm has no model 'nope'"}


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown features"):
        AppArgs.model_validate({"features": {"sift": {}}})


def test_light_extractors_query_in_the_ingress_unless_told_not_to() -> None:
    args = AppArgs.model_validate({"features": {"phash": {"query_in_ingress": False}, "color": {}}})
    assert not args.query_in_ingress("phash") and args.query_in_ingress("color")


def test_relative_data_dir_is_under_the_project_root(tmp_path: Path) -> None:
    assert AppArgs().data_path() == ROOT / "data"
    assert AppArgs(data_dir=str(tmp_path)).data_path() == tmp_path
    assert AppArgs(max_pixels=5).extractor_options("phash") == {"max_pixels": 5}


def test_preflight_names_a_misspelt_setting_serve_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Serve 2.60 ignores unknown deployment options without a word; the preflight (``make
    serve``) and every test deploy refuse them, and the args' own typos too."""
    from scripts.preflight import main

    shipped = SERVE_YAML.read_text()
    assert main([str(SERVE_YAML)]) == 0
    typos = {
        "max_queued_requests: 64": "max_queued_request: 64",
        "upscale_delay_s: 5\n": "upscale_delay: 5\n",
        "{max_batch_size: 8,": "{max_batch: 8,",
        "snapshot_interval_s: 30": "snapshot_intervals_s: 30",
    }
    named = ["'max_queued_request'", "autoscaling_config.upscale_delay", "user_config.max_batch"]
    for (right, wrong), shown in zip(typos.items(), [*named, "snapshot_intervals_s"], strict=True):
        assert right in shipped, right
        bad = tmp_path / "serve.yaml"
        bad.write_text(shipped.replace(right, wrong, 1))
        assert main([str(bad)]) == 2
        assert shown in capsys.readouterr().err
    bad.write_text(shipped.replace("name: extract_caption", "name: extract_captions"))
    assert main([str(bad)]) == 2
    assert "'extract_captions': the app has no such deployment" in capsys.readouterr().err
