"""The original services' routes and their gateway's, answered with their field names and
shapes so that an existing gallery client can switch over. Their quirks that were bugs
(every error a 500, a missing id silently "deleted") are not copied."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, File, Form, Request, Response, UploadFile
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from deployments.auth import READ, KeyedRoute, needs
from deployments.config import SEED_NAMES
from deployments.engine import Engine
from deployments.http import as_form, engine, upload
from deployments.schemas import Listed
from deployments.search import read
from extractors import REGISTRY
from extractors.local import unit_scale
from extractors.textdoc import labels
from index_actors.interface import InvalidInput, NotFound, Unavailable, UnknownImage
from index_actors.kinds import Blank, SearchOptions, kind_of


def _not_bool(value: Any) -> Any:
    """JSON true is not an id (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


# Every route checks the request's key (``deployments/auth.py``): searches and analyses
# need a read key (``needs(READ)``), the other routes (POSTs that store or delete) a write key.
router = APIRouter(tags=["original services"], route_class=KeyedRoute)
SEED_SERVICES = {seed: name for name, seed in SEED_NAMES.items()}
ImageId = Annotated[int, Field(ge=0, lt=2**63), BeforeValidator(_not_bool)]
Eng = Annotated[Engine, Depends(engine)]
Upload = Annotated[UploadFile | None, File()]
Threshold = Annotated[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None, Blank]
K = Annotated[int | None, Blank]


class ById(SearchOptions):
    """``/{svc}_get_similar_images_by_id``: an id, and ``k`` or ``distance_threshold``."""

    model_config = ConfigDict(extra="allow")
    image_id: ImageId
    k: K = None
    distance_threshold: Threshold = None


class ByText(SearchOptions):
    """``/image_text_features_get_similar_images_by_text``."""

    model_config = ConfigDict(extra="allow")
    text: Any = None
    k: K = None
    distance_threshold: Threshold = None


class ImageRef(BaseModel):
    """An image by id, or (``/delete_{svc}_features``) by file name."""

    model_config = ConfigDict(extra="allow")
    image_id: ImageId | None = None
    file_name: str | None = None


class BufferOptions(SearchOptions):
    """``/{svc}_get_similar_images_by_image_buffer``'s form fields."""

    k: K = None
    distance_threshold: Threshold = None


#: The original local-features route's default ``matching_threshold`` (unit HardNet8
#: descriptors).
SEED_MATCHING_THRESHOLD = 0.9
#: What the original gateway asked of each service: phash under this distance, the others'
#: 200 nearest, local features with these matching settings.
GATEWAY_DUPLICATE = 64
GATEWAY_K = 200
GATEWAY_LOCAL = {
    "k_clusters": 10,
    "knn_min_matches": 4,
    "matching_threshold": 0.8,
    "use_smnn_matching": 1,
    "use_ransac": 1,
}


def feature(eng: Engine, svc: str) -> str:
    """The feature of a service name: "color" for color, but "global" for global_features
    (the original route is /calculate_global_features); 404 for one not enabled here."""
    name = SEED_SERVICES.get(svc) or SEED_SERVICES.get(f"{svc}_features")
    if name is None or name not in eng.extractors:
        enabled = ", ".join(SEED_NAMES[n] for n in eng.extractors if n in SEED_NAMES)
        raise NotFound(f"no service {svc!r} here; enabled: {enabled}")
    return eng.features(name)[0]


def mode(eng: Engine, name: str, k: int | None, t: float | None) -> tuple[int | None, float | None]:
    """The original's exactly-one-of k / distance_threshold; its threshold is strict (<)
    and in its unit (squared L2 for global features and CLIP)."""
    if k is not None and t is not None:
        raise InvalidInput("give k or distance_threshold, not both")
    metric = REGISTRY[name].metric
    return (eng.k(k), None) if t is None else (None, kind_of(name).seed_threshold(t, metric))


def seed_options(eng: Engine, name: str, values: Any) -> dict[str, Any]:
    """A feature's search options from an original route's fields, in our units: there the
    local features' ``matching_threshold`` is the L2 distance between unit-length
    descriptors, here between the stored bytes.

    Unset, it is the original's 0.9 for HardNet8, its descriptor. For RootSIFT (ours
    without weights) 0.9 lets nearly every descriptor vote (its components are all
    positive, so unrelated ones lie closer): the index's own default stays."""
    options = eng.options(name, values, seed=True)
    if kind_of(name).name == "keypoints":
        extractor = eng.args.extractor_options(name)
        if "matching_threshold" in options:
            options["matching_threshold"] *= unit_scale(extractor)
        elif extractor.get("descriptor") == "hardnet8":
            options["matching_threshold"] = SEED_MATCHING_THRESHOLD * unit_scale(extractor)
    return options


def listing(name: str, hits: list[Listed]) -> list[dict[str, Any]]:
    """A service's answer: ``distance`` per image in the service's unit, or for local
    features ``matches``."""
    metric = REGISTRY[name].metric
    return [kind_of(name).seed_entry(h.model_dump(), metric) for h in hits]


def required(image_id: int | None) -> int:
    """An image id a body must carry."""
    if image_id is None:
        raise InvalidInput("image_id is required (an integer)")
    return image_id


@router.post("/calculate_all_image_features")
async def calculate_all(
    request: Request,
    eng: Eng,
    image: Upload = None,
    image_id: Annotated[int | None, Form(ge=0, lt=2**63)] = None,
) -> list[dict[str, Any]]:
    """Gateway: store every feature; one settled-promise-like entry per service."""
    image_id = required(image_id)
    # Every enabled feature, stored or not, so that the answer's length does not change
    # with which models have their weights.
    added = await eng.add(upload(request, image), image_id, None, list(eng.extractors))
    return [
        {"status": "fulfilled", "value": ""} if s == "ok" else {"status": "rejected", "reason": s}
        for s in added.features.values()
    ]


@router.post("/delete_all_image_features")
async def delete_all(eng: Eng, body: Annotated[ImageRef, Body()]) -> list[dict[str, str]]:
    """Gateway: delete an image everywhere (404 if unknown, unlike the original)."""
    await eng.delete(required(body.image_id))
    return [{"status": "fulfilled"} for _ in eng.extractors]


@router.post("/reverse_search", openapi_extra=needs(READ))
async def reverse_search(
    request: Request,
    eng: Eng,
    image: Upload = None,
    find_duplicate: Annotated[int | None, Form(ge=0)] = None,
) -> dict[str, Any]:
    """Gateway: per-service lists (first 20) and ``unified_res`` from fusion.

    ``find_duplicate=1`` returns only the near-duplicates (phash under the duplicate
    threshold, mirrored included) under ``duplicate``, or ``{}`` when there are none.
    """
    data = await read(upload(request, image))
    return await (duplicates(eng, data) if find_duplicate else unified(eng, data))


async def unified(eng: Engine, data: bytes) -> dict[str, Any]:
    """The original gateway's search: phash under distance 64, the others' 200 nearest
    (local features with its matching settings); each service's first 20 under
    ``<service>_res`` (empty ones left out); ``unified_res``: the images at least two
    services found, scored by the sum of 1/rank over them, highest first (absent when
    empty). The weighted fusion is the native ``/search/image``'s."""
    names = [n for n in eng.visual if n in SEED_NAMES]
    thresholds = {"phash": kind_of("phash").seed_threshold(GATEWAY_DUPLICATE)}
    options = {n: seed_options(eng, n, GATEWAY_LOCAL) for n in names if n == "local"}
    lists = await eng.extract_and_search(data, names, GATEWAY_K, thresholds, options)
    names_of = await eng.client.names(sorted({i for hits in lists.values() for i, _ in hits}))
    listed = {n: await eng.listing(hits, names_of) for n, hits in lists.items()}
    out: dict[str, Any] = {
        f"{SEED_NAMES[n]}_res": listing(n, hits[:20]) for n, hits in listed.items() if hits
    }
    scores: dict[int, float] = defaultdict(float)
    sources: Counter[int] = Counter()
    for hits in listed.values():
        for rank, hit in enumerate(hits, start=1):
            scores[hit.image_id] += 1 / rank
            sources[hit.image_id] += 1
    found = sorted((i for i in scores if sources[i] >= 2), key=lambda i: (-scores[i], i))
    if found:
        out["unified_res"] = [{"image_id": i, "score": scores[i]} for i in found]
    return out


async def duplicates(eng: Engine, data: bytes) -> dict[str, Any]:
    """The gateway's ``find_duplicate``: every phash match at a distance under the
    duplicate threshold (mirrored included), as the phash route lists them, under
    ``duplicate``; ``{}`` when there is none."""
    eng.duplicates_source("find_duplicate")
    queries, failed = await eng.extract(data, ["phash"], query=True)
    if not queries:
        raise Unavailable(f"phash could not be computed: {failed}")
    threshold = kind_of("phash").seed_threshold(eng.args.fusion.duplicate_threshold)
    hits = (await eng.search(queries, None, {"phash": threshold}))["phash"]
    return {"duplicate": listing("phash", await eng.listing(hits))} if hits else {}


@router.post("/calculate_{svc}_features")
async def calculate(
    request: Request,
    svc: str,
    eng: Eng,
    image: Upload = None,
    image_id: Annotated[int | None, Form(ge=0, lt=2**63)] = None,
) -> Response:
    """A service: store one feature of an image (replaces on re-add)."""
    name = feature(eng, svc)
    added = await eng.add(upload(request, image), required(image_id), None, [name])
    if added.features[name] != "ok":
        raise Unavailable(added.features[name])
    return Response(status_code=200)


@router.post("/delete_{svc}_features")
async def delete(svc: str, eng: Eng, body: Annotated[ImageRef, Body()]) -> Response:
    """A service: delete one feature of an image, by id or by file name."""
    name = feature(eng, svc)
    image_id = await eng.id_of(body.file_name) if body.file_name else required(body.image_id)
    if not await eng.client.has(name, [image_id]):
        raise UnknownImage(f"image {image_id} has no {name} feature")
    await eng.delete(image_id, [name])
    return Response(status_code=200)


@router.post("/{svc}_get_similar_images_by_id", openapi_extra=needs(READ))
async def by_id(svc: str, eng: Eng, body: Annotated[ById, Body()]) -> list[dict[str, Any]]:
    """A service: ``[{"image_id", "distance", "file_name"}]`` nearest to a stored image,
    searched by its stored feature as the original did: the image itself is listed (first,
    at distance 0) and counts towards ``k``."""
    name = feature(eng, svc)
    k, t = mode(eng, name, body.k, body.distance_threshold)
    options = seed_options(eng, name, body)
    found = await eng.similar(name, body.image_id, k, t, options, itself=True)
    return listing(name, found.results)


@router.post("/image_text_features_get_similar_images_by_text", openapi_extra=needs(READ))
async def by_text(eng: Eng, body: Annotated[ByText, Body()]) -> list[dict[str, Any]]:
    """A service: ``[{"image_id", "distance", "file_name"}]`` matching a text (CLIP)."""
    name = eng.embedder or "clip"
    k, t = mode(eng, name, body.k, body.distance_threshold)
    return listing(name, await eng.listing(await eng.text_hits(body.text, k, t, body)))


@router.post("/{svc}_get_similar_images_by_image_buffer", openapi_extra=needs(READ))
async def by_image(
    request: Request,
    svc: str,
    eng: Eng,
    fields: Annotated[BufferOptions, Depends(as_form(BufferOptions))],
    image: Upload = None,
) -> list[dict[str, Any]]:
    """A service: nearest stored images to an upload (phash and local: mirrored too; local
    takes the original's matching parameters and answers ``matches`` per image)."""
    name = feature(eng, svc)
    k, t = mode(eng, name, fields.k, fields.distance_threshold)
    options = {name: seed_options(eng, name, fields)}
    queries = await eng.queries(upload(request, image), [name])
    hits = (await eng.search(queries, k, {name: t}, options))[name]
    return listing(name, await eng.listing(hits))


@router.post("/get_image_tags", openapi_extra=needs(READ))
async def tags(request: Request, eng: Eng, image: Upload = None) -> list[str]:
    """The tagger: an upload's tags as a list of labels (Places365's first, the original's
    tagger, where it is enabled; then ImageNet's)."""
    doc, _ = await eng.analyze(upload(request, image), ("places", "tags"), "tagger (places, tags)")
    return labels(doc)


@router.post("/get_image_caption", openapi_extra=needs(READ))
async def caption(request: Request, eng: Eng, image: Upload = None) -> str:
    """The captioner: an upload's caption, a string."""
    doc, _ = await eng.analyze(upload(request, image), ("caption",), "captioner")
    return str(doc.get("caption", ""))
