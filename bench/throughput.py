"""throughput: images/s of every extractor (phash, color, local, global, tags, ocr, caption)
on the shipped photos, decoding included, one process with the machine's cores, against
global features (EfficientNet-Lite0, the peer); captions by BLIP-base's architecture with
random weights (``blip_base_in_memory``, also used by ``scripts/gpu_check.py``)."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import Row, features, row
from extractors import build_extractor


def blip_base_in_memory(device: str = "cpu") -> Any:
    """A ``Captioner`` holding BLIP-base's architecture (ViT-B/16 at 384 px, a BERT-base
    decoder) with random weights: no captioning weights can be fetched here, and the work
    per image is the architecture's. Every caption is made 20 tokens long, a typical one."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from extractors.caption import Captioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    captioner = Captioner(num_beams=3, max_new_tokens=20, threads=os.cpu_count(), device=device)
    torch.manual_seed(0)
    model: Any = BlipForConditionalGeneration(BlipConfig())
    model = model.to(device).eval()
    model.generation_config.min_new_tokens = 20
    captioner.model, captioner.processor = model, BlipProcessor(BlipImageProcessor(), tokenizer)
    return captioner


def bench_throughput(photos: dict[str, bytes]) -> list[Row]:
    """images/s of every extractor on the shipped photos (decoding included), one process
    with the machine's cores; the peer is global features (EfficientNet-Lite0)."""
    blobs = list(photos.values())
    rates: dict[str, dict[int, float]] = {}
    for name in ("phash", "color", "local", "global", "tags", "ocr", "caption"):
        ex = blip_base_in_memory() if name == "caption" else build_extractor(name)
        ex.load()
        features(ex, blobs[:1])  # warm-up
        rates[name] = {}
        for batch in (1, 4) if ex.uses_torch else (1,):
            start = time.perf_counter()
            for lo in range(0, len(blobs), batch):
                features(ex, blobs[lo : lo + batch])
            rates[name][batch] = len(blobs) / (time.perf_counter() - start)
        print(
            f"throughput: {name} images/s "
            + ", ".join(f"batch {b}: {r:.2f}" for b, r in rates[name].items())
        )
    peer = max(rates["global"].values())
    what = {"caption": " (BLIP-base, random weights, 3 beams x 20 tokens)"}
    return [
        row(
            f"{name} images/s, best batch{what.get(name, '')} (peer global)",
            max(r.values()),
            peer,
            "info",
            None,
        )
        for name, r in rates.items()
        if name != "global"
    ]
