"""Small image builders shared by the tests."""

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode an image to bytes in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def store_photos(client: Any, photos: dict[str, bytes], features: dict[str, str]) -> None:
    """POST every photo as ids 1..n in name order; each must store exactly ``features``."""
    for i, (name, data) in enumerate(sorted(photos.items()), start=1):
        upload = {"image": (name, data, "image/jpeg")}
        r = client.post("/images", files=upload, data={"image_id": i})
        assert r.status_code == 200, r.text
        assert r.json() == {"image_id": i, "file_name": name, "features": features}


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a side x side PNG of one colour, a few tens of KB on disk."""
    return encode(Image.new("1", (side, side)), "PNG")


def reencode(data: bytes, scale: float = 1.0, quality: int = 75, mirror: bool = False) -> bytes:
    """A resized / recompressed / mirrored copy of a JPEG."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize(
            (int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS
        )
    if mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return encode(img, "JPEG", quality=quality)


#: A CLIP a few layers deep: the real open_clip code, in well under a second.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_clip_dir(path: Path) -> Path:
    """An open_clip ``local-dir`` model (config + random, seeded weights) under ``path``."""
    import open_clip
    import torch

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {}}
    (path / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)  # type: ignore[arg-type]
    torch.save(model.state_dict(), path / "open_clip_pytorch_model.bin")
    return path


def transformed(data: bytes) -> dict[str, bytes]:
    """The retrieval-quality transforms of a photo: name -> JPEG bytes."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    cw, ch = int(w * 0.7**0.5), int(h * 0.7**0.5)  # 70 % of the area
    crop = img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
    return {
        "resize_25": reencode(data, scale=0.25, quality=90),
        "jpeg_30": reencode(data, quality=30),
        "crop_70": encode(crop, "JPEG", quality=90),
        "mirror": reencode(data, mirror=True, quality=90),
        "bright_30": encode(ImageEnhance.Brightness(img).enhance(1.3), "JPEG", quality=90),
    }
