"""The native HTTP API (README "Using it"): each route parses, calls the engine, shapes."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile

from deployments.auth import OPTIONAL, READ, KeyedRoute, granted, needs
from deployments.engine import Engine
from deployments.http import as_form, as_query, engine, etag_matches, upload
from deployments.schemas import (
    Added,
    Analysis,
    Deleted,
    Duplicates,
    Health,
    ImageInfo,
    SearchResult,
    Similar,
    TextSearchResult,
    Up,
)
from index_actors.interface import InvalidInput
from index_actors.kinds import Blank, SearchOptions, VectorOptions

# Every route checks the request's key (``deployments/auth.py``): GET routes need a read
# key, the others a write key, unless one says otherwise (searches and analyses by upload).
router = APIRouter(route_class=KeyedRoute)
#: Image ids are signed 64-bit keys in LMDB and FAISS; negative ones are not given out.
ID = {"ge": 0, "lt": 2**63}
Eng = Annotated[Engine, Depends(engine)]
Upload = Annotated[UploadFile | None, File()]
FormOptions = Annotated[SearchOptions, Depends(as_form(SearchOptions))]
QueryOptions = Annotated[SearchOptions, Depends(as_query(SearchOptions))]
TextOptions = Annotated[VectorOptions, Depends(as_query(VectorOptions))]


@router.post("/images")
async def add_image(
    request: Request,
    eng: Eng,
    image: Upload = None,
    image_id: Annotated[int | None, Form(**ID)] = None,
    file_name: Annotated[str | None, Form()] = None,
    features: Annotated[str | None, Form(description="comma list; default: all")] = None,
) -> Added:
    """Store an image's features; re-adding an id replaces it. Without ``file_name``, the
    upload's own name labels the image."""
    names = eng.features(features, list(eng.extractors))  # by default, each says its status
    data = upload(request, image)
    label = None if file_name is not None or image is None else image.filename
    name = file_name or label
    return await eng.add(data, image_id, name, names, label=bool(label), replace=True)


@router.get("/images/{image_id}")
async def get_image(eng: Eng, image_id: Annotated[int, Path(**ID)]) -> ImageInfo:
    """What is stored for an image id."""
    return await eng.describe(image_id)


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}}, 304: {"description": "Not modified"}},
)
async def get_thumbnail(
    request: Request, eng: Eng, image_id: Annotated[int, Path(**ID)]
) -> Response:
    """The image's thumbnail (WebP, 320 px on its longest side) with an ETag; 304 when the
    client's copy (``If-None-Match``) is current. 404: unknown image, thumbnails off, or an
    image stored before thumbnails."""
    data = await eng.thumbnail(image_id)
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    # Re-adding an id replaces its thumbnail: browsers revalidate (cheap 304s), never guess.
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/webp", headers=headers)


@router.get("/images")
async def find_image(eng: Eng, file_name: Annotated[str, Query()] = "") -> ImageInfo:
    """What is stored for a file name."""
    if not file_name:
        raise InvalidInput("query parameter file_name is required")
    return await eng.describe(await eng.id_of(file_name), file_name)


@router.delete("/images/{image_id}")
async def delete_image(eng: Eng, image_id: Annotated[int, Path(**ID)]) -> Deleted:
    """Delete an image and all its features."""
    await eng.delete(image_id)
    return Deleted(image_id=image_id)


# ``partial`` only when a shard did not answer (no other field of these answers is None).
@router.post("/search/image", response_model_exclude_none=True, openapi_extra=needs(READ))
async def search_image(
    request: Request,
    eng: Eng,
    options: FormOptions,
    image: Upload = None,
    k: Annotated[int | None, Form()] = None,
    features: Annotated[str | None, Form()] = None,
    phash_threshold: Annotated[float | None, Form(ge=0, allow_inf_nan=False)] = None,
    duplicates_only: Annotated[int | None, Form(ge=0)] = None,
) -> SearchResult:
    """Fused search by an uploaded image (phash also searches the mirrored image).

    ``features`` defaults to the visual ones; a text feature (ocr, caption, tags) named there
    searches by the upload's own text. ``phash_threshold`` (default from the config, 64) is
    the Hamming distance at or under which a result is a near-duplicate;
    ``duplicates_only=1`` returns just those. ``aqe_n`` / ``aqe_alpha``: alpha query
    expansion of the global and clip queries; the local-feature options apply to ``local``.
    """
    data = upload(request, image)
    only = bool(duplicates_only)
    return await eng.search_image(data, k, features, options, phash_threshold, only)


@router.get("/search/similar/{image_id}", response_model_exclude_none=True)
async def search_similar(
    eng: Eng,
    options: QueryOptions,
    image_id: Annotated[int, Path(**ID)],
    feature: Annotated[str, Query()] = "phash",
    k: Annotated[int | None, Query(), Blank] = None,
    threshold: Annotated[float | None, Query(ge=0, allow_inf_nan=False), Blank] = None,
) -> Similar:
    """Stored images nearest to a stored one, by one feature; with ``threshold`` only those
    within that distance (at most ``k``); ``aqe_n`` / ``aqe_alpha``: query expansion."""
    names = eng.features(feature)
    if len(names) != 1:
        raise InvalidInput(f"give one feature, not {feature!r}")
    kk, found = eng.k(k), eng.options(names[0], options)
    return await eng.similar(names[0], image_id, kk, threshold, found)


@router.get("/search/text", response_model_exclude_none=True)
async def search_text(
    eng: Eng,
    options: TextOptions,
    q: Annotated[str, Query()] = "",
    k: Annotated[int | None, Query(), Blank] = None,
    features: Annotated[str | None, Query()] = None,
) -> TextSearchResult:
    """Stored images matching a text: CLIP's shared image-text space fused with the words
    of their OCR text, captions and tags (misspelt and sound-alike words match too).
    ``features``: a comma list of clip, ocr, caption, tags; by default every enabled one,
    CLIP named under ``unavailable`` while its weights are missing."""
    return await eng.search_text(q, k, features, options)


@router.get("/duplicates")
async def duplicates(
    eng: Eng,
    feature: Annotated[str, Query()] = "phash",
    threshold: Annotated[float | None, Query(ge=0, allow_inf_nan=False), Blank] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Duplicates:
    """Groups of near-duplicates across the whole collection, largest first: connected
    components of the image pairs within ``threshold`` (phash: Hamming bits, 0 to 128,
    default the app's near-duplicate threshold; mirrored copies included). Vector features
    (color, global, clip) group too, with a threshold in their own distance."""
    return await eng.duplicates(feature, threshold, page, page_size)


@router.post("/analyze", openapi_extra=needs(READ))
async def analyze(request: Request, eng: Eng, image: Upload = None) -> Analysis:
    """Tags, caption and text (OCR's words with confidence and box) of an upload, nothing
    stored; a feature whose model is missing is named under ``unavailable``."""
    what = "text feature (tags, caption, ocr)"
    doc, failed = await eng.analyze(upload(request, image), eng.text_extractors, what)
    return Analysis(
        tags=doc.get("tags", []),
        caption=doc.get("caption"),
        text=doc.get("text"),
        words=doc.get("words", []),
        unavailable=failed,
    )


@router.get("/health", openapi_extra=needs(OPTIONAL))
async def health(request: Request, eng: Eng) -> Health | Up:
    """Every extractor (available, or why not) and every index (count); when the app has
    API keys, only with one: without, just that the app is up (a load balancer's probe)."""
    if granted(request) is None:
        return Up()
    return await eng.health()
