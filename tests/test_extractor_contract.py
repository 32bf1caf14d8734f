"""Every registered extractor honours the Extractor contract; phash and colour specifics."""

import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from extractors import REGISTRY, ColorHistogram, Extractor, InvalidImage, PHash, build_extractor
from extractors.textdoc import checked_doc, decode_doc, labels
from index_actors.kinds import BlobKind, KeypointsKind, TextKind, kind_of
from tests.helpers import encode, places_dir, tiny_blip_dir, tiny_clip_dir


@pytest.fixture(scope="module")
def test_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Options that make every extractor loadable here: CLIP's and the captioner's weights
    are not shipped, so tiny random ones stand in (global and tags use the real packaged
    weights), as do random Places365 networks; OCR reads the photos at 800 px, to be quick."""
    return {
        "clip": {"model": f"local-dir:{tiny_clip_dir(tmp_path_factory.mktemp('clip'))}"},
        "caption": {"model": str(tiny_blip_dir(tmp_path_factory.mktemp("blip")))},
        "ocr": {"max_side": 800},
        "places": {"folder": str(places_dir(tmp_path_factory.mktemp("places")))},
    }


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def extractor(request: pytest.FixtureRequest, test_options: dict) -> Extractor:
    ex = build_extractor(request.param, test_options.get(request.param))
    ex.load()
    return ex


def _same(extractor: Extractor, a: object, b: object) -> bool:
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    if isinstance(kind_of(extractor.name), TextKind) and not extractor.exact:
        # A network's scores move in the last digits between batch sizes: same words.
        da, db = decode_doc(a), decode_doc(b)
        return labels(da) == labels(db) and da.get("caption") == db.get("caption")
    if extractor.exact:
        return np.array_equal(a, b)
    # Networks: batched and single forward passes differ in the last float bits only.
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


def test_shapes_and_dtypes(extractor: Extractor, photos: dict[str, bytes]) -> None:
    feats = extractor.extract_bytes(list(photos.values()))
    for feat in feats:
        assert isinstance(feat, np.ndarray)
        assert feat.dtype == extractor.dtype
        kind = kind_of(extractor.name)
        if isinstance(kind, KeypointsKind):  # a count, then 8 + 128 bytes per keypoint
            assert feat.ndim == 1 and (len(feat) - 4) % (8 + extractor.dim) == 0
        elif isinstance(kind, TextKind):  # a JSON document the text index takes
            assert feat.ndim == 1 and checked_doc(decode_doc(feat)) is not None
        elif isinstance(kind, BlobKind):  # a file's bytes (thumbnails: WebP)
            assert feat.ndim == 1 and Image.open(io.BytesIO(feat.tobytes())).format == "WEBP"
        else:  # the column batch ingest makes for it (``Extractor.column``)
            assert feat.ndim == 1 and (feat.dtype.str, len(feat)) == extractor.column


def test_deterministic_and_batch_equals_one_by_one(
    extractor: Extractor, photos: dict[str, bytes]
) -> None:
    blobs = list(photos.values())
    batch = extractor.extract_bytes(blobs)
    again = extractor.extract_bytes(blobs)
    single = [extractor.extract_bytes([b])[0] for b in blobs]
    for a, b, c in zip(batch, again, single, strict=True):
        assert np.array_equal(a, b) and _same(extractor, a, c)


def test_query_variants_start_with_the_feature(
    extractor: Extractor, photos: dict[str, bytes]
) -> None:
    blobs = list(photos.values())[:3]
    feats = extractor.extract_bytes(blobs)
    variants = extractor.extract_bytes(blobs, query=True)
    for f, v in zip(feats, variants, strict=True):
        assert isinstance(v, np.ndarray) and v.ndim == 2
        if isinstance(kind_of(extractor.name), KeypointsKind):
            assert _mostly_the_same_keypoints(v[0], f)
            continue
        # Variable-length rows are zero-padded; a stored phash carries its mirrored hash
        # (the second variant) behind the hash.
        n = min(len(f), len(v[0])) if extractor.dim else len(f)
        assert _same(extractor, v[0][:n], f[:n])


def _mostly_the_same_keypoints(query: np.ndarray, stored: np.ndarray) -> bool:
    """A local query is detected and described in one SIFT pass over its strongest extrema
    (a stored image in two): nearly every query keypoint, with its descriptor, is one the
    stored feature has. They differ where the seed's rule runs out of strong extrema (a flat
    sky: fewer keypoints) and in which orientation of a keypoint found twice is kept."""
    from extractors.keypoint_pack import unpack

    (qp, qd), (sp, sd) = unpack(query), unpack(stored)
    rows = {(p.tobytes(), d.tobytes()) for p, d in zip(sp, sd, strict=True)}
    shared = sum((p.tobytes(), d.tobytes()) in rows for p, d in zip(qp, qd, strict=True))
    return len(qp) >= 0.85 * len(sp) and shared >= 0.95 * len(qp)


def test_bad_input_is_returned_per_item(extractor: Extractor, photos: dict[str, bytes]) -> None:
    good = next(iter(photos.values()))
    out = extractor.extract_bytes([b"not an image", good, b"", good[:200]])
    assert isinstance(out[0], InvalidImage) and isinstance(out[2], InvalidImage)
    assert isinstance(out[3], InvalidImage)
    assert _same(extractor, out[1], extractor.extract_bytes([good])[0])


def test_vectors_of_models_are_unit_length(extractor: Extractor, photos: dict[str, bytes]) -> None:
    if extractor.metric != "ip":
        pytest.skip("not an inner-product feature")
    for feat in extractor.extract_bytes(list(photos.values())):
        assert isinstance(feat, np.ndarray)
        assert abs(float(np.linalg.norm(feat)) - 1.0) < 1e-5


def test_pixel_cap(
    extractor: Extractor, photos: dict[str, bytes], test_options: dict[str, dict[str, object]]
) -> None:
    options = {**test_options.get(extractor.name, {}), "max_pixels": 1000}
    capped = build_extractor(extractor.name, options)
    (out,) = capped.extract_bytes([next(iter(photos.values()))])
    assert isinstance(out, InvalidImage) and out.status == 413


def _exact(data: bytes) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.packbits(imagehash.phash(img, hash_size=24).hash.ravel())


def _hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def test_phash_full_resolution_matches_imagehash_bit_for_bit(photos: dict[str, bytes]) -> None:
    ours = PHash(draft=False).extract_bytes(list(photos.values()))
    for data, feat in zip(photos.values(), ours, strict=True):
        assert isinstance(feat, np.ndarray) and len(feat) == 144
        assert feat[:72].tobytes() == _exact(data).tobytes()
    # The stored feature is the hash, then the mirrored image's (the query's two variants).
    variants = PHash(draft=False).extract_bytes(list(photos.values()), query=True)
    assert all(np.array_equal(f, v.ravel()) for f, v in zip(ours, variants, strict=True))  # type: ignore[union-attr]
    alone = PHash(draft=False, mirror=False).extract_bytes(list(photos.values())[:1])[0]
    assert isinstance(alone, np.ndarray) and alone.tobytes() == ours[0].tobytes()[:72]  # type: ignore[union-attr]


def test_phash_on_png_matches_imagehash(photos: dict[str, bytes]) -> None:
    png = encode(Image.open(io.BytesIO(next(iter(photos.values())))), "PNG")
    (feat,) = PHash(draft=False).extract_bytes([png])
    assert isinstance(feat, np.ndarray) and feat[:72].tobytes() == _exact(png).tobytes()


def test_phash_draft_stays_close_to_exact(photos: dict[str, bytes]) -> None:
    feats = PHash().extract_bytes(list(photos.values()))
    dists = [_hamming(f[:72], _exact(d)) for f, d in zip(feats, photos.values(), strict=True)]  # type: ignore[arg-type]
    assert np.mean(dists) <= 6, dists


def test_phash_mirrored_variant_matches_hash_of_mirrored_image(photos: dict[str, bytes]) -> None:
    ph = PHash(draft=False)
    for data in list(photos.values())[:4]:
        img = Image.open(io.BytesIO(data)).convert("L")
        mirrored = ph.extract([img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])[0][:72]
        variants = ph.query_variants([img])[0]
        assert _hamming(variants[1], mirrored) <= 8
        assert _hamming(variants[0], mirrored) > 100  # mirroring really changes the hash


def test_colour_histogram_sums_to_1e7_and_matches_full_resolution(
    photos: dict[str, bytes],
) -> None:
    small = ColorHistogram().extract_bytes(list(photos.values()))
    full = ColorHistogram(decode_size=None).extract_bytes(list(photos.values()))
    for s, f in zip(small, full, strict=True):
        assert isinstance(s, np.ndarray) and isinstance(f, np.ndarray)
        assert abs(float(s.sum()) - 1e7) < 10 and abs(float(f.sum()) - 1e7) < 10
        # L1 between the draft and the full histogram, as a share of the maximum (2e7).
        assert np.abs(s - f).sum() / 2e7 < 0.05


def test_colour_bins_are_rgb_major() -> None:
    img = Image.new("RGB", (10, 10), (255, 0, 0))
    (hist,) = ColorHistogram().extract([img])
    assert hist[7 * 64] == pytest.approx(1e7)


class _Fragile(PHash):
    """A phash that breaks on tiny images, standing in for an extractor bug."""

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        if any(min(img.size) < 16 for img in images):
            raise RuntimeError("too small for me")
        return super().extract(images)


def test_an_extractor_failure_stays_with_its_image(photos: dict[str, bytes]) -> None:
    good = list(photos.values())[:2]
    tiny = encode(Image.new("RGB", (8, 8)), "PNG")
    out = _Fragile().extract_bytes([good[0], tiny, good[1]])
    assert isinstance(out[1], InvalidImage) and out[1].status == 422
    assert "too small for me" in str(out[1])
    expected = PHash().extract_bytes(good)
    assert np.array_equal(out[0], expected[0]) and np.array_equal(out[2], expected[1])
