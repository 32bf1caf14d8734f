"""Local features for finding crops: SIFT keypoints chosen as the seed chose them, RootSIFT
descriptors stored as bytes (no weights needed), or HardNet8 descriptors of the same
keypoints' patches (kornia) when its weights are present.

One image's feature is a variable-length uint8 array (see ``pack``): a count, the keypoints
(x, y as float32) and one 128-byte descriptor per keypoint.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from extractors.base import FUSED, Extractor, Kind, Query, WeightsUnavailable
from extractors.images import InvalidImage, decode
from extractors.keypoint_pack import DESC, HEADER, keypoint_count, pack, unpack
from extractors.weights import FETCH, existing_file, offline, read_state_dict

__all__ = ["DESC", "HEADER", "LocalFeatures", "keypoint_count", "pack", "unit_scale", "unpack"]

#: RootSIFT components are in [0, 1] with unit L2 norm (most below 0.5): x512, clipped,
#: keeps them as bytes at a resolution that matching does not notice.
SCALE = 512.0
#: HardNet8 components are in [-1, 1] with unit L2 norm (most within +-0.3): x256 + 128.
HARDNET_SCALE = 256.0


def unit_scale(options: dict[str, Any]) -> float:
    """Stored descriptor units per unit of L2 distance between the unit-length descriptors,
    for a local-features extractor's options (its ``descriptor``)."""
    return HARDNET_SCALE if options.get("descriptor") == "hardnet8" else SCALE


#: The HardNet8 weights kornia publishes (``kornia.feature.HardNet8(pretrained=True)``).
HARDNET_REPO, HARDNET_FILE = "kornia/hardnet", "hardnet8v2.pt"
#: Patch half-size per SIFT keypoint size, as kornia-moons converts OpenCV keypoints.
MR_SIZE = 6.0
DESCRIPTORS = ("rootsift", "hardnet8")
#: Strongest SIFT extrema a query's keypoints are chosen from (the seed's rule chose the
#: same 200 from the top 1,500 on 8 of 8 photos at 800 x 600, and 7 of 8 from the top 1,000).
QUERY_EXTREMA = 2000
#: A SIFT keypoint at x in an image w pixels wide is at w - MIRROR_X - x in its mirror
#: (OpenCV's upscaled first octave shifts keypoints by a quarter pixel; measured).
MIRROR_X = 0.5
#: Where a SIFT descriptor's bin (row, column, orientation) of a 4 x 4 x 8 grid goes in the
#: mirrored image's descriptor of the mirrored keypoint: the rows flip (the patch is seen
#: in the keypoint's frame, whose axis the mirror reverses) and orientations run backwards.
MIRRORED_BINS = np.arange(DESC).reshape(4, 4, 8)[::-1][:, :, (-np.arange(8)) % 8].ravel().copy()


def root_quantised(desc: np.ndarray) -> np.ndarray:
    """RootSIFT descriptors as bytes (x ``SCALE``) from OpenCV's SIFT descriptors."""
    root = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))
    return np.clip(np.rint(root * SCALE), 0, 255).astype(np.uint8)


def mirrored_descriptors(desc: np.ndarray) -> np.ndarray:
    """SIFT (or RootSIFT) descriptors of the mirrored keypoints in the mirrored image."""
    return np.ascontiguousarray(desc[:, MIRRORED_BINS])


class LocalFeatures(Extractor):
    """Up to ``max_keypoints`` SIFT keypoints per image with RootSIFT descriptors.

    Options follow the seed: at most ``per_quadrant`` keypoints per quadrant, the crowding
    rule (``radius``, ``max_neighbours``), images over ``max_area`` pixels downscaled
    first. Unlike the seed, ``radius`` (50 px) is for a 3000 px image and scales with the
    longer side: a fixed 50 px left a 324 x 223 crop 62 keypoints and no match in its scene
    (``pairs/box.png``), 10 px found it. ``query_variants`` adds the mirrored image unless
    ``mirror`` is off (it doubles a query's search time; with RootSIFT its keypoints and
    descriptors come from the image's own, mirrored, without a second SIFT pass).

    A query is read at ``query_max_area`` pixels at most (None, the default: ``max_area``,
    as stored images). A bound trades ranking for time: a 1600 x 1067 photo read at
    800 x 533 costs half the SIFT time, and crops are found as before, but the photo's
    own stored copy has ~60 % of its keypoints in SIFT's finest octave, which the smaller
    query cannot see: it then ranks first for 7 of 14 photos instead of 14 (measured:
    docs/architecture.md, "Measured numbers"). A query of a fused search (``FUSED``),
    where phash and global features find the photo itself, is read at
    ``fused_query_max_area`` pixels at most: there local features only need to find crops,
    which the bound leaves as they were (the crops bench).

    ``descriptor``: ``rootsift`` (default, no weights) or ``hardnet8``, whose weights come
    from ``weights`` (a file) or the Hugging Face cache (``scripts/fetch_models.py local``).
    Both are stored as 128 bytes; a store holds one kind, so changing it needs a new
    ``data_dir`` (the distances are not comparable).
    """

    name: ClassVar[str] = "local"
    kind: ClassVar[Kind] = "keypoints"
    dim = DESC
    dtype: ClassVar[type] = np.uint8
    metric: ClassVar[str] = "l2"
    decode_mode = "L"

    def __init__(
        self,
        max_keypoints: int = 200,
        per_quadrant: int = 50,
        radius: float = 50.0,
        max_neighbours: int = 3,
        max_area: int = 3000 * 3000,
        descriptor: str = "rootsift",
        weights: str | None = None,
        mirror: bool = True,
        query_max_area: int | None = None,
        fused_query_max_area: int | None = 480_000,
        max_pixels: int = 100_000_000,
    ) -> None:
        super().__init__(max_pixels=max_pixels)
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"unknown descriptor {descriptor!r}; known: {', '.join(DESCRIPTORS)}")
        self.descriptor = descriptor
        self.weights = weights
        self.mirror = mirror
        self._hardnet: Any = None
        self._load_lock = threading.Lock()
        self.max_keypoints = max_keypoints
        self.per_quadrant = per_quadrant
        self.radius = radius
        self.max_neighbours = max_neighbours
        self.max_area = max_area
        self.query_max_area = query_max_area
        self.fused_query_max_area = fused_query_max_area
        # contrastThreshold -1: every extremum is a candidate; the selection picks.
        import cv2  # here, not at the top: processes that only read the kind stay small

        self.sift = cv2.SIFT_create(contrastThreshold=-1)  # type: ignore[attr-defined]
        self.query_sift = cv2.SIFT_create(  # type: ignore[attr-defined]
            nfeatures=QUERY_EXTREMA, contrastThreshold=-1
        )

    def load(self) -> None:
        """Load HardNet8 when it is the descriptor (``WeightsUnavailable`` naming the fix)."""
        if self.descriptor != "hardnet8" or self._hardnet is not None:
            return
        with self._load_lock:
            if self._hardnet is not None:
                return
            from kornia.feature import HardNet8

            what = "local (HardNet8)"
            state = read_state_dict(self._hardnet_file(what), what)
            model = HardNet8(pretrained=False)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise WeightsUnavailable(f"{what}: not a HardNet8 checkpoint: {first}") from None
            self._hardnet = model.eval()

    def _hardnet_file(self, what: str) -> Path:
        if self.weights:
            return existing_file(self.weights, what)
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(HARDNET_REPO, HARDNET_FILE, local_files_only=offline()))
        except Exception as exc:
            raise WeightsUnavailable(
                f"{what}: {HARDNET_REPO}/{HARDNET_FILE} is not in the model cache "
                f"({type(exc).__name__}); fetch it with {FETCH.format(feature='local')}"
            ) from None

    def _query_area(self, query: Query = True) -> int:
        """The most pixels a query of this mode is read at."""
        bound = self.fused_query_max_area if query == FUSED else None
        return min(self.max_area, bound or self.query_max_area or self.max_area)

    def _prepared(self, img: Image.Image, max_area: int | None = None) -> np.ndarray:
        w, h = img.size
        area = max_area or self.max_area
        if w * h > area:
            k = (w * h / area) ** 0.5
            img = img.resize((round(w / k), round(h / k)), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)

    def _detected(self, gray: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Every SIFT extremum by falling response, and their (x, y) as float64."""
        found = sorted(self.sift.detect(gray, None), key=lambda kp: -kp.response)
        return found, np.array([kp.pt for kp in found], dtype=np.float64).reshape(-1, 2)

    def _chosen(self, xy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Indices (into ``xy``, in its order) of the keypoints the seed's rule keeps."""
        from extractors.keypoint_select import select

        h, w = shape[:2]
        return select(
            xy[:, 0],
            xy[:, 1],
            float(w),
            float(h),
            self.max_keypoints,
            self.per_quadrant,
            self.radius * max(h, w) / 3000,
            self.max_neighbours,
        )

    def _rootsift(self, gray: np.ndarray, kps: list[Any]) -> tuple[list[Any], np.ndarray]:
        """The keypoints SIFT described and their RootSIFT descriptors as bytes."""
        kps, desc = self.sift.compute(gray, kps)
        if desc is None or not len(kps):
            return [], np.empty((0, DESC), np.uint8)
        return list(kps), root_quantised(desc)

    def features(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints n x 2, RootSIFT descriptors n x 128 uint8) of a grey image array."""
        found, xy = self._detected(gray)
        if not found:
            return np.empty((0, 2), np.float32), np.empty((0, DESC), np.uint8)
        kps = [found[i] for i in self._chosen(xy, gray.shape)]
        if self.descriptor == "hardnet8":
            return np.array([kp.pt for kp in kps], np.float32), self._hardnet8(gray, kps)
        kps, desc = self._rootsift(gray, kps)
        return np.array([kp.pt for kp in kps], np.float32).reshape(-1, 2), desc

    def query_features(self, gray: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(keypoints, RootSIFT descriptors) of the image and, with ``mirror``, of its
        mirror, from one SIFT pass over the ``QUERY_EXTREMA`` strongest extrema.

        ``features`` detects every extremum, chooses, then describes the chosen ones in a
        second pass (OpenCV rebuilds the pyramid for it); a query detects and describes in
        one pass. The seed's rule chooses among the strongest extrema, which holds the
        choice from all of them unless the rule runs out of them (a flat quadrant: it then
        keeps fewer). The mirror's extrema are the image's, mirrored, with the same
        responses; the rule chooses among them in mirrored coordinates, and each chosen
        keypoint's descriptor is its own with the bins mirrored (``mirrored_descriptors``).
        Against a second pass over the mirrored pixels, ~92 % of the keypoints come out
        identical and the rest differ by their sub-pixel refinement.
        """
        found, desc = self.query_sift.detectAndCompute(gray, None)
        if desc is None or not found:
            empty = (np.empty((0, 2), np.float32), np.empty((0, DESC), np.uint8))
            return [empty, empty] if self.mirror else [empty]
        order = np.argsort([-kp.response for kp in found], kind="stable")
        xy = np.array([found[i].pt for i in order], np.float64).reshape(-1, 2)
        quantised = root_quantised(desc[order])
        keep = self._chosen(xy, gray.shape)
        out = [(xy[keep].astype(np.float32), quantised[keep])]
        if self.mirror:
            flipped = xy.copy()
            flipped[:, 0] = gray.shape[1] - MIRROR_X - xy[:, 0]
            keep = self._chosen(flipped, gray.shape)
            out.append((flipped[keep].astype(np.float32), mirrored_descriptors(quantised[keep])))
        return out

    def _hardnet8(self, gray: np.ndarray, kps: list[Any]) -> np.ndarray:
        """HardNet8 descriptors (as bytes) of 32 x 32 patches at the keypoints' scale and angle."""
        import torch
        from kornia.feature import extract_patches_from_pyramid, laf_from_center_scale_ori

        self.load()
        n = len(kps)
        xy = torch.tensor([kp.pt for kp in kps], dtype=torch.float32).view(1, n, 2)
        scale = torch.tensor([MR_SIZE * kp.size for kp in kps]).view(1, n, 1, 1)
        angle = torch.tensor([-kp.angle for kp in kps]).view(1, n, 1)
        laf = laf_from_center_scale_ori(xy, scale.float(), angle.float())
        image = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None]
        with torch.inference_mode():
            patches = extract_patches_from_pyramid(image, laf, PS=32)[0]
            desc = self._hardnet(patches).numpy()
        return np.clip(np.rint(desc * HARDNET_SCALE + 128), 0, 255).astype(np.uint8)

    def extract(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Packed keypoints and descriptors of each image (zero keypoints is a valid result)."""
        return [pack(*self.features(self._prepared(img))) for img in images]

    def query_variants(self, images: list[Image.Image], query: Query = True) -> list[np.ndarray]:
        """The image and (with ``mirror``) its mirror, at the query's bound
        (``query_max_area``, or ``fused_query_max_area`` for ``FUSED``), zero-padded to one
        width (``unpack`` reads the count)."""
        out = []
        for img in images:
            gray = self._prepared(img, self._query_area(query))
            if self.descriptor == "hardnet8":  # a learnt descriptor: no mirrored bins
                rows = [pack(*self.features(gray))]
                if self.mirror:
                    rows.append(pack(*self.features(np.ascontiguousarray(gray[:, ::-1]))))
            else:
                rows = [pack(*variant) for variant in self.query_features(gray)]
            width = max(len(r) for r in rows)
            out.append(np.stack([np.pad(r, (0, width - len(r))) for r in rows]))
        return out

    def extract_bytes(
        self, blobs: list[bytes], query: Query = False
    ) -> list[np.ndarray | InvalidImage]:
        """As ``Extractor.extract_bytes``; a query over its bound's pixels is decoded as its
        luminance alone, in JPEG draft mode down to that size where it can be."""
        if not query:
            return super().extract_bytes(blobs, query)
        return [self._query(data, query) for data in blobs]

    def _query(self, data: bytes, query: Query) -> np.ndarray | InvalidImage:
        try:
            img = self._query_image(data, self._query_area(query))
        except InvalidImage as exc:
            return exc
        return self._compute([img], lambda imgs: self.query_variants(imgs, query))[0]

    def _query_image(self, data: bytes, area: int) -> Image.Image:
        """A query upload decoded for ``query_variants`` at ``area`` pixels at most."""
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
        except Exception:  # decode says what is wrong with it
            w = h = 0
        if w * h <= area:  # as stored images are decoded
            return self.decode(data)
        # Both sides stay at least the downscaled ones: the rest is a LANCZOS resize.
        side = max(1, int(min(w, h) * (area / (w * h)) ** 0.5))
        return decode(data, mode=self.decode_mode, size=side, max_pixels=self.max_pixels)
