"""The FastAPI ingress: validation, fan-out to extractors and index actors, fusion, errors."""

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from deployments.config import SEED_NAMES, AppArgs
from deployments.fusion import fuse
from extractors import REGISTRY, InvalidImage, WeightsUnavailable, build_extractor
from extractors.base import decode_doc
from extractors.local import keypoint_count
from index_actors.actor import catalog_actor, index_actor
from index_actors.indexes import Hit, UnknownImage
from index_actors.text import (
    MAX_QUERY_WORDS,
    TextUnavailable,
    doc_text,
    labels,
    merge_docs,
    words,
)

log = logging.getLogger("ray.serve")
#: Longest text query: CLIP reads 77 tokens; a page of text is a mistake, not a query.
MAX_QUERY_CHARS = 1000
app = FastAPI(title="Image retrieval engine")
SEED_SERVICES = {seed: name for name, seed in SEED_NAMES.items()}


def _int_field(value: Any, field: str, required: bool = True) -> int | None:
    """Parse an integer form/JSON field with a message a person can act on."""
    if value is None or value == "":
        if required:
            raise HTTPException(422, f"{field} is required (an integer)")
        return None
    if isinstance(value, bool):
        raise HTTPException(422, f"{field} must be an integer, got {value!r}")
    try:
        parsed = int(value)
    except (TypeError, ValueError, OverflowError):
        raise HTTPException(422, f"{field} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != parsed:
        raise HTTPException(422, f"{field} must be an integer, got {value!r}")
    if not 0 <= parsed < 2**63:
        raise HTTPException(422, f"{field} must be between 0 and 2^63-1, got {parsed}")
    return parsed


def _reason(exc: BaseException) -> str:
    """The message of an error from a deployment or actor, without Ray's traceback."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


def _check_file_name(name: str) -> None:
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise HTTPException(422, "file_name is not valid Unicode text") from None
    if not name.strip() or size > 255:
        raise HTTPException(422, "file_name must be 1 to 255 bytes of UTF-8")


def _float_field(value: Any, field: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        raise HTTPException(422, f"{field} must be a number, got {value!r}") from None
    if not np.isfinite(parsed) or parsed < 0:
        raise HTTPException(422, f"{field} must be a finite number >= 0, got {value!r}")
    return parsed


class _BodyLimit:
    """413 for a body over the upload cap, before it is parsed or spooled to disk.

    Checks Content-Length up front and counts the bytes of a chunked body as they arrive
    (raising from ``receive``, which FastAPI's body parsing passes on as the 413).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The app from the scope, not this module's global: Serve ships the ingress class,
        # FastAPI app included, by value, so the module's own `app` is another object.
        cap = getattr(scope["app"].state, "max_upload_bytes", None) if "app" in scope else None
        if scope["type"] != "http" or cap is None:
            return await self.inner(scope, receive, send)
        limit = cap + 64 * 1024  # multipart framing around the file itself
        too_big = HTTPException(413, f"upload is over the limit of {cap} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await JSONResponse({"detail": too_big.detail}, 413)(scope, receive, send)
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"{too_big.detail}: stopped reading after {seen} bytes")
            return message

        await self.inner(scope, counted, send)


app.add_middleware(_BodyLimit)


@app.exception_handler(RayError)
async def _ray_error(request: Request, exc: RayError) -> JSONResponse:
    """An index or extractor call failed for reasons not the client's: 503, with the cause."""
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    cause = getattr(exc, "cause", None) or exc
    return JSONResponse({"detail": f"a backend call failed, retry: {cause}"}, 503)


@serve.deployment(
    # The ingress only parses and awaits; a small slice of a core is enough for it.
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,
)
@serve.ingress(app)
class Ingress:
    """Composes the extractor deployments and index actors into ingest and search."""

    def __init__(
        self,
        args: AppArgs,
        extractors: dict[str, DeploymentHandle],
        dims: dict[str, int | str],
    ) -> None:
        self.args = args
        self.extractors = extractors
        #: Enabled features that have no index, and why: a model whose width is unknown
        #: (its name is wrong). Their routes answer 503 with the reason; the rest runs.
        self.missing = {n: d for n, d in dims.items() if isinstance(d, str)}
        app.state.max_upload_bytes = int(self.args.max_upload_mb * 1024 * 1024)
        # Query features of light extractors (no weights, a few ms of CPU) are computed here:
        # a hop to their deployment costs more than the work (measured in scripts/bench.py).
        # Ingest still goes through the deployments, which batch and autoscale.
        self.local = {
            name: build_extractor(name, self.args.extractor_options(name))
            for name in self.extractors
            if self.args.query_in_ingress(name)
        }
        data = str(self.args.data_path())
        self.catalog = catalog_actor(self.args.name, data)
        self.indexes = {}
        for name, dim in dims.items():
            if isinstance(dim, str):
                continue
            try:
                self.indexes[name] = index_actor(
                    self.args.name,
                    name,
                    REGISTRY[name].kind,
                    data,
                    dim,
                    self.args.index_options(name),
                    self.args.snapshot_interval_s,
                    self.args.index_actor_cpus,
                )
            except RayError as exc:  # a store of another model's features, say
                log.error("index of %s unavailable: %s", name, exc)
                self.missing[name] = f"index unavailable: {_reason(exc)}"

    # --- shared steps -----------------------------------------------------------------
    @property
    def visual(self) -> list[str]:
        """Indexed features that compare images (all but the text ones)."""
        return [n for n in self.indexes if REGISTRY[n].kind != "text"]

    @property
    def textual(self) -> list[str]:
        """Indexed text features (ocr, caption, tags, places)."""
        return [n for n in self.indexes if REGISTRY[n].kind == "text"]

    def _features(self, requested: str | None, default: list[str] | None = None) -> list[str]:
        """The requested features (a comma list), checked; ``default`` (every indexed
        feature unless given) when none is requested."""
        if not requested:
            return list(self.indexes) if default is None else default
        names = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in names if n not in self.extractors]
        if unknown or not names:
            raise HTTPException(
                422,
                f"unknown or disabled features {unknown or requested!r}; "
                f"enabled: {', '.join(self.extractors)}",
            )
        for name in names:
            if name in self.missing:
                raise HTTPException(503, f"{name} is unavailable: {self.missing[name]}")
        return list(dict.fromkeys(names))

    @staticmethod
    def _search_options(name: str, values: dict[str, Any], seed: bool = False) -> dict[str, Any]:
        """The per-search options a feature's index takes, parsed from request fields:
        alpha query expansion (``aqe_n``, ``aqe_alpha``) for inner-product features, the
        seed's matching parameters for local features. ``seed``: the seed's defaults for
        what is unset (local: votes only, no mutual matching, no RANSAC)."""
        out: dict[str, Any] = {}
        cls = REGISTRY[name]
        if cls.metric == "ip":
            n = _int_field(values.get("aqe_n"), "aqe_n", required=False)
            if n is not None:
                if n > 100:
                    raise HTTPException(422, f"aqe_n must be between 0 and 100, got {n}")
                out["aqe_n"] = n
            alpha = _float_field(values.get("aqe_alpha"), "aqe_alpha")
            if alpha is not None:
                out["aqe_alpha"] = alpha
        elif cls.kind == "keypoints":
            for flag in ("use_smnn_matching", "use_ransac"):
                on = _int_field(values.get(flag), flag, required=False)
                if on is not None or seed:
                    out[flag] = bool(on)
            k_clusters = _int_field(values.get("k_clusters"), "k_clusters", required=False)
            if k_clusters is not None:
                if not 1 <= k_clusters <= 100:
                    raise HTTPException(422, f"k_clusters must be 1 to 100, got {k_clusters}")
                out["k_clusters"] = k_clusters
            least = _int_field(values.get("knn_min_matches"), "knn_min_matches", required=False)
            if least is not None:
                out["knn_min_matches"] = max(1, least)
            for field in ("matching_threshold", "smnn_match_threshold"):
                value = _float_field(values.get(field), field)
                if value is not None:
                    out[field] = value
        return out

    @staticmethod
    def _searchable(queries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Query features minus local ones without a keypoint and text ones without a word
        (an image searched by its own text); 422 when none is left."""

        def empty(name: str, query: np.ndarray) -> bool:
            kind = REGISTRY[name].kind
            rows = np.atleast_2d(query)
            if kind == "keypoints":
                return not any(keypoint_count(row) for row in rows)
            return kind == "text" and not words(doc_text(decode_doc(rows[0])))

        gone = [n for n, q in queries.items() if empty(n, q)]
        if gone and len(gone) == len(queries):
            what = " or ".join(
                "keypoints (a flat or tiny image?)" if REGISTRY[n].kind == "keypoints" else "text"
                for n in dict.fromkeys(gone)
            )
            raise HTTPException(422, f"no {what} found in this image: nothing to match")
        return {n: q for n, q in queries.items() if n not in gone}

    async def _seed_listing(self, name: str, hits: list[Hit]) -> list[dict]:
        """A seed service's answer: ``distance`` per image, or for local features the
        ``matches`` (inliers, or votes) as the seed's local service gave."""
        listing = await self._listing(hits)
        if REGISTRY[name].kind == "keypoints":
            for r in listing:
                r["matches"] = round(1 / r.pop("distance") - 1)
        return listing

    def _k(self, k: Any) -> int:
        value = _int_field(k, "k", required=False)
        value = self.args.fusion.default_k if value is None else value
        if not 1 <= value <= self.args.fusion.max_k:
            raise HTTPException(
                422, f"k must be between 1 and {self.args.fusion.max_k}, got {value}"
            )
        return value

    async def _read(self, image: UploadFile | None) -> bytes:
        cap = int(self.args.max_upload_mb * 1024 * 1024)
        if image is None:
            raise HTTPException(422, "missing multipart file field 'image'")
        data = await image.read(cap + 1)
        if len(data) > cap:
            raise HTTPException(413, f"upload is over the limit of {cap} bytes")
        if not data:
            raise HTTPException(400, "empty upload: the 'image' field has no data")
        return data

    async def _extract(
        self, data: bytes, names: list[str], query: bool
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Features of one upload per extractor, and why any extractor could not run.

        An unreadable image is the client's fault whichever extractor noticed: 4xx.
        """
        calls = [
            asyncio.to_thread(self._local_query, n, data)
            if query and n in self.local
            else self.extractors[n].extract.remote(data, query)
            for n in names
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        feats: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, InvalidImage):
                raise HTTPException(result.status, str(result))
            if isinstance(result, WeightsUnavailable):
                failed[name] = f"unavailable: {_reason(result)}"
            elif isinstance(result, BaseException):
                log.exception("extractor %s failed", name, exc_info=result)
                failed[name] = f"error: {_reason(result)}"
            else:
                feats[name] = result
        return feats, failed

    def _local_query(self, name: str, data: bytes) -> np.ndarray | InvalidImage:
        return self.local[name].extract_bytes([data], query=True)[0]

    async def _names(self, ids: list[int]) -> dict[int, str]:
        return await self.catalog.name_of.remote(ids) if ids else {}

    async def _known(self, image_id: int) -> str:
        names = await self._names([image_id])
        if image_id not in names:
            raise HTTPException(404, f"no image with id {image_id}")
        return names[image_id]

    async def _search(
        self,
        queries: dict[str, np.ndarray],
        k: int | None,
        thresholds: dict[str, float | None],
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, list[Hit]]:
        names = list(queries)
        extra = extra or {}
        calls = [
            self.indexes[n].search.remote(queries[n], k, thresholds.get(n), **extra.get(n, {}))
            for n in names
        ]
        results = await asyncio.gather(*calls)
        return dict(zip(names, results, strict=True))

    async def _listing(self, hits: list[Hit], names: dict[int, str] | None = None) -> list[dict]:
        names = names if names is not None else await self._names([i for i, _ in hits])
        return [
            {"image_id": i, "file_name": names.get(i), "distance": d} for i, d in hits if i in names
        ]

    async def _add(
        self,
        data: bytes,
        image_id: int | None,
        file_name: str | None,
        names: list[str],
        name_is_label: bool = False,
        replace_all: bool = False,
    ) -> tuple[int, str, dict[str, str]]:
        """Extract, then register, then store every feature.

        Nothing is stored for a bad image. A failed index write answers 503: the client
        retries, which is safe since re-adding replaces; a new image is then taken out
        again, so that it is not half visible under an id the retry will not reuse.
        ``name_is_label``: the name came from the upload, not from the client, so it does
        not identify an image. ``replace_all``: for an image that exists, features this add
        does not compute are removed, since they described what the id held before (a new
        image has none: an upload must not fail on a store it does not touch).
        """
        if file_name is not None:
            _check_file_name(file_name)
        feats, status = await self._extract(data, names, query=False)
        if not feats:
            raise HTTPException(503, f"no feature could be computed: {status}")
        if image_id is not None:
            existed = image_id in await self._names([image_id])
        else:
            named = file_name if file_name and not name_is_label else None
            existed = named is not None and await self.catalog.id_of.remote(named) is not None
        try:
            image_id, file_name = await self.catalog.register.remote(
                file_name, image_id, name_is_label
            )
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        writes = [self.indexes[n].add.remote([image_id], f[None, :]) for n, f in feats.items()]
        if replace_all and existed:
            stale = [n for n in self.indexes if n not in feats]
            writes += [self.indexes[n].remove.remote([image_id]) for n in stale]
        results = await asyncio.gather(*writes, return_exceptions=True)
        for name, result in zip(feats, results, strict=False):
            status[name] = (
                "ok" if not isinstance(result, BaseException) else f"error: {_reason(result)}"
            )
        if any(isinstance(r, BaseException) for r in results):
            if not existed:
                await self._withdraw(image_id, [n for n in feats if status[n] == "ok"])
                raise HTTPException(503, f"the image was not stored, retry: {status}")
            raise HTTPException(503, f"image {image_id} was not stored completely, retry: {status}")
        return image_id, file_name, {n: status[n] for n in names}

    async def _withdraw(self, image_id: int, written: list[str]) -> None:
        """Take a new image out again after a failed write: its written features, then its
        catalog entry. Best effort: what cannot be removed now is logged."""
        undo = [self.indexes[n].remove.remote([image_id]) for n in written]
        results = await asyncio.gather(*undo, return_exceptions=True)
        if any(isinstance(r, BaseException) for r in results):
            log.error("image %s: features %s stay after a failed add", image_id, written)
            return
        await self.catalog.unregister.remote(image_id)

    async def _delete(self, image_id: int, names: list[str] | None = None) -> None:
        """Remove an image's features (all by default, then the image itself)."""
        await self._known(image_id)
        targets = names or list(self.indexes)
        await asyncio.gather(*(self.indexes[n].remove.remote([image_id]) for n in targets))
        if names is None:
            await self.catalog.unregister.remote(image_id)

    async def _docs(self, image_id: int) -> dict[str, Any]:
        """An image's stored text: ``tags``, ``caption``, ``text`` (None / [] when absent)."""
        names = self.textual
        found = await asyncio.gather(*(self.indexes[n].docs.remote([image_id]) for n in names))
        doc = merge_docs(got.get(image_id, {}) for got in found)
        return {
            "tags": doc.get("tags", []),
            "caption": doc.get("caption"),
            "text": doc.get("text"),
        }

    async def _describe(self, image_id: int, file_name: str) -> dict[str, Any]:
        present = await asyncio.gather(*(a.has.remote([image_id]) for a in self.indexes.values()))
        feats = [n for n, has in zip(self.indexes, present, strict=True) if has]
        return {
            "image_id": image_id,
            "file_name": file_name,
            "features": feats,
            **(await self._docs(image_id)),
        }

    # --- native API -------------------------------------------------------------------
    @app.post("/images")
    async def add_image(
        self,
        image: UploadFile | None = File(None),
        image_id: str | None = Form(None),
        file_name: str | None = Form(None),
        features: str | None = Form(None),
    ) -> dict[str, Any]:
        """Store an image's features; re-adding an id replaces it."""
        parsed = _int_field(image_id, "image_id", required=False)
        names = self._features(features)
        data = await self._read(image)
        # Without a file_name field, the upload's own name labels the image.
        label = None if file_name is not None or image is None else image.filename
        new_id, name, status = await self._add(
            data, parsed, file_name or label, names, name_is_label=bool(label), replace_all=True
        )
        return {"image_id": new_id, "file_name": name, "features": status}

    @app.get("/images/{image_id}")
    async def get_image(self, image_id: str) -> dict[str, Any]:
        """What is stored for an image id."""
        parsed = _int_field(image_id, "image_id")
        assert parsed is not None
        return await self._describe(parsed, await self._known(parsed))

    @app.get("/images")
    async def find_image(self, file_name: str = Query("")) -> dict[str, Any]:
        """What is stored for a file name."""
        if not file_name:
            raise HTTPException(422, "query parameter file_name is required")
        image_id = await self.catalog.id_of.remote(file_name)
        if image_id is None:
            raise HTTPException(404, f"no image with file name {file_name!r}")
        return await self._describe(image_id, file_name)

    @app.delete("/images/{image_id}")
    async def delete_image(self, image_id: str) -> dict[str, Any]:
        """Delete an image and all its features."""
        parsed = _int_field(image_id, "image_id")
        assert parsed is not None
        await self._delete(parsed)
        return {"image_id": parsed, "deleted": True}

    @app.post("/search/image")
    async def search_image(
        self,
        image: UploadFile | None = File(None),
        k: str | None = Form(None),
        features: str | None = Form(None),
        phash_threshold: str | None = Form(None),
        duplicates_only: str | None = Form(None),
        aqe_n: str | None = Form(None),
        aqe_alpha: str | None = Form(None),
    ) -> dict[str, Any]:
        """Fused search by an uploaded image (phash also searches the mirrored image).

        ``features`` defaults to the visual ones; a text feature (ocr, caption, tags) named
        there searches by the upload's own text, caption or tags.

        ``phash_threshold`` (default from the config, 64) is the Hamming distance at or under
        which a result is a near-duplicate; ``duplicates_only=1`` returns just those.
        ``aqe_n`` / ``aqe_alpha``: alpha query expansion of the global and clip queries.
        """
        kk = self._k(k)
        only_dups = bool(_int_field(duplicates_only, "duplicates_only", required=False))
        names = ["phash"] if only_dups else self._features(features, self.visual)
        fields = {"aqe_n": aqe_n, "aqe_alpha": aqe_alpha}
        options = {n: self._search_options(n, fields) for n in names}
        if only_dups and "phash" not in self.extractors:
            raise HTTPException(503, "duplicates_only needs the phash feature, which is disabled")
        dup = _float_field(phash_threshold, "phash_threshold")
        dup = self.args.fusion.duplicate_threshold if dup is None else dup
        data = await self._read(image)
        queries, failed = await self._extract(data, names, query=True)
        if not queries:
            raise HTTPException(503, f"no feature could be computed: {failed}")
        queries = self._searchable(queries)
        k_each = kk if only_dups else max(kk, self.args.fusion.candidates)
        thresholds: dict[str, float | None] = {"phash": dup} if only_dups else {}
        lists = await self._search(queries, k_each, thresholds, options)
        return await self._fused(lists, kk, dup)

    async def _fused(
        self, lists: dict[str, list[Hit]], k: int, dup: float | None = None
    ) -> dict[str, Any]:
        weights = {n: self.args.features[n].weight for n in lists}
        fused = fuse(lists, weights, self.args.fusion.rank_constant, "phash", dup)[:k]
        ids = {i for hits in lists.values() for i, _ in hits[:k]} | {f.image_id for f in fused}
        names = await self._names(sorted(ids))
        return {
            "results": [
                {
                    "image_id": f.image_id,
                    "file_name": names.get(f.image_id),
                    "score": f.score,
                    "duplicate": f.duplicate,
                    "matches": f.matches,
                }
                for f in fused
                if f.image_id in names
            ],
            "by_feature": {n: await self._listing(h[:k], names) for n, h in lists.items()},
        }

    @app.get("/search/similar/{image_id}")
    async def search_similar(
        self,
        image_id: str,
        feature: str = Query("phash"),
        k: str | None = Query(None),
        threshold: str | None = Query(None),
        aqe_n: str | None = Query(None),
        aqe_alpha: str | None = Query(None),
    ) -> dict[str, Any]:
        """Stored images nearest to a stored one, by one feature.

        With ``threshold``, only those within that distance (at most ``k`` of them);
        ``aqe_n`` / ``aqe_alpha``: alpha query expansion (global, clip).
        """
        parsed = _int_field(image_id, "image_id")
        assert parsed is not None
        names = self._features(feature)
        if len(names) != 1:
            raise HTTPException(422, f"give one feature, not {feature!r}")
        t = _float_field(threshold, "threshold")
        options = self._search_options(names[0], {"aqe_n": aqe_n, "aqe_alpha": aqe_alpha})
        hits = await self._by_id(names[0], parsed, self._k(k), t, options)
        return {"results": await self._listing(hits)}

    async def _by_id(
        self,
        name: str,
        image_id: int,
        k: int | None,
        threshold: float | None,
        extra: dict[str, Any] | None = None,
    ) -> list[Hit]:
        await self._known(image_id)
        try:
            return await self.indexes[name].search_by_id.remote(
                image_id, k, threshold, **(extra or {})
            )
        except UnknownImage:
            raise HTTPException(404, f"image {image_id} has no {name} feature") from None

    @staticmethod
    def _checked_query(text: Any) -> str:
        """A text query, or a 422 saying what is wrong with it."""
        if not isinstance(text, str) or not text.strip():
            raise HTTPException(422, "the text query is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise HTTPException(
                422, f"the text query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}"
            )
        return text

    async def _text_hits(
        self, text: Any, k: int | None, threshold: float | None, extra: dict[str, Any]
    ) -> list[Hit]:
        """CLIP's nearest stored images to a text query."""
        text = self._checked_query(text)
        if "clip" not in self.extractors:
            raise HTTPException(503, "text search needs the clip feature, which is disabled")
        self._features("clip")
        try:
            query = await self.extractors["clip"].embed_text.remote(text)
        except WeightsUnavailable as exc:
            raise HTTPException(503, f"clip is unavailable: {_reason(exc)}") from None
        hits = await self._search({"clip": query}, k, {"clip": threshold}, {"clip": extra})
        return hits["clip"]

    @app.get("/search/text")
    async def search_text(
        self,
        q: str = Query(""),
        k: str | None = Query(None),
        features: str | None = Query(None),
        aqe_n: str | None = Query(None),
        aqe_alpha: str | None = Query(None),
    ) -> dict[str, Any]:
        """Stored images matching a text: CLIP's shared image-text space fused with the words
        of their OCR text, captions and tags, where misspelt and sound-alike words match too.

        ``features``: a comma list of clip, ocr, caption, tags; by default every enabled one,
        CLIP left out (and named under ``unavailable``) while its weights are missing. A text
        backend that is down (PostgreSQL) is a 503: its results are never silently dropped.
        """
        kk = self._k(k)
        text = self._checked_query(q)
        sources = [n for n in self.indexes if n == "clip"] + self.textual
        names = self._features(features, sources)
        if other := [n for n in names if n not in sources]:
            raise HTTPException(422, f"{other} cannot search by text; text sources: {sources}")
        if not names:
            raise HTTPException(
                503, "text search needs clip or a text feature (ocr, caption, tags): none is on"
            )
        n_words = len(words(text))
        if any(REGISTRY[n].kind == "text" for n in names):  # CLIP reads any text
            if not n_words:
                raise HTTPException(422, "the query has no words to search for")
            if n_words > MAX_QUERY_WORDS:
                raise HTTPException(
                    422, f"the query has {n_words} words; the limit is {MAX_QUERY_WORDS}"
                )
        options = self._search_options("clip", {"aqe_n": aqe_n, "aqe_alpha": aqe_alpha})
        k_each = max(kk, self.args.fusion.candidates)
        calls = [
            self._text_hits(text, k_each, None, options)
            if n == "clip"
            else self.indexes[n].search.remote(text, k_each)
            for n in names
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        lists: dict[str, list[Hit]] = {}
        unavailable: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, HTTPException) and not features and result.status_code == 503:
                unavailable[name] = str(result.detail)  # clip without weights: a known state
            elif isinstance(result, TextUnavailable):
                raise HTTPException(503, f"text search ({name}) is unavailable: {_reason(result)}")
            elif isinstance(result, BaseException):
                raise result
            else:
                lists[name] = result
        if not lists:
            raise HTTPException(503, f"no text source could answer: {unavailable}")
        return {**(await self._fused(lists, kk)), "unavailable": unavailable}

    async def _analyzed(
        self, image: UploadFile | None, wanted: tuple[str, ...], what: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The merged text document of an upload from those of the ``wanted`` extractors
        that are enabled, and why any of them could not run; 503 when none is enabled or
        none could run (``what`` names them in the message)."""
        names = [n for n in wanted if n in self.extractors]
        if not names:
            raise HTTPException(503, f"no {what} is enabled in this app")
        feats, failed = await self._extract(await self._read(image), names, query=False)
        if not feats:
            raise HTTPException(503, f"no {what} could run: {failed}")
        return merge_docs(decode_doc(f) for f in feats.values()), failed

    @app.post("/analyze")
    async def analyze(self, image: UploadFile | None = File(None)) -> dict[str, Any]:
        """Tags, caption and text (and OCR's words with confidence and box) of an upload,
        nothing stored; a feature whose model is missing is named under ``unavailable``."""
        texts = tuple(n for n in self.extractors if REGISTRY[n].kind == "text")
        doc, failed = await self._analyzed(image, texts, "text feature (tags, caption, ocr)")
        return {
            "tags": doc.get("tags", []),
            "caption": doc.get("caption"),
            "text": doc.get("text"),
            "words": doc.get("words", []),
            "unavailable": failed,
        }

    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        """Every extractor (available, or why not) and every index (count)."""
        infos = await asyncio.gather(
            *(h.info.remote() for h in self.extractors.values()), return_exceptions=True
        )
        *counts, images = await asyncio.gather(
            *(a.describe.remote() for a in self.indexes.values()),
            self.catalog.count.remote(),
            return_exceptions=True,
        )
        extractors = {
            n: info
            if not isinstance(info, BaseException)
            else {"available": False, "reason": f"error: {_reason(info)}", "error": True}
            for n, info in zip(self.extractors, infos, strict=True)
        }
        indexes: dict[str, Any] = {
            n: c if not isinstance(c, BaseException) else {"error": _reason(c)}
            for n, c in zip(self.indexes, counts, strict=True)
        }
        indexes.update({n: {"error": f"no index: {why}"} for n, why in self.missing.items()})
        # An extractor without weights is a known state of this install (its reason says
        # how to fix it), not a fault: "degraded" is for what should work and does not.
        ok = (
            not any(e.get("error") for e in extractors.values())
            and all("count" in i for n, i in indexes.items() if n not in self.missing)
            and not isinstance(images, BaseException)
        )
        return {
            "status": "ok" if ok else "degraded",
            "extractors": extractors,
            "indexes": indexes,
            "images": images if not isinstance(images, BaseException) else f"error: {images}",
        }

    # --- seed-compatible API ----------------------------------------------------------
    @app.post("/calculate_all_image_features")
    async def seed_calculate_all(
        self,
        image: UploadFile | None = File(None),
        image_id: str | None = Form(None),
    ) -> list[dict[str, Any]]:
        """Seed gateway: store every feature; one settled-promise-like entry per service."""
        parsed = _int_field(image_id, "image_id")
        data = await self._read(image)
        _, _, status = await self._add(data, parsed, None, list(self.indexes))
        return [
            {"status": "fulfilled", "value": ""}
            if s == "ok"
            else {"status": "rejected", "reason": s}
            for s in status.values()
        ]

    @app.post("/delete_all_image_features")
    async def seed_delete_all(self, body: dict[str, Any] = Body(...)) -> list[dict[str, str]]:
        """Seed gateway: delete an image everywhere (404 if unknown, unlike the seed)."""
        parsed = _int_field(body.get("image_id"), "image_id")
        assert parsed is not None
        await self._delete(parsed)
        return [{"status": "fulfilled"} for _ in self.indexes]

    @app.post("/reverse_search")
    async def seed_reverse_search(
        self,
        image: UploadFile | None = File(None),
        find_duplicate: str | None = Form(None),
    ) -> dict[str, Any]:
        """Seed gateway: per-service lists (first 20) and ``unified_res`` from fusion.

        ``find_duplicate=1`` returns only the near-duplicates (phash within the duplicate
        threshold, mirrored included) under ``phash_res``, or ``{}`` when there are none.
        """
        dup_mode = _int_field(find_duplicate, "find_duplicate", required=False)
        data = await self._read(image)
        threshold = self.args.fusion.duplicate_threshold
        if dup_mode:
            if "phash" not in self.extractors:
                raise HTTPException(
                    503, "find_duplicate needs the phash feature, which is disabled"
                )
            queries, failed = await self._extract(data, ["phash"], query=True)
            if not queries:
                raise HTTPException(503, f"phash could not be computed: {failed}")
            hits = (await self._search(queries, None, {"phash": threshold}))["phash"]
            return {"phash_res": await self._listing(hits)} if hits else {}
        queries, failed = await self._extract(data, self.visual, query=True)
        if not queries:
            raise HTTPException(503, f"no feature could be computed: {failed}")
        queries = self._searchable(queries)
        # The seed gateway's numbers: 200 candidates per service, 20 of each listed.
        lists = await self._search(queries, 200, {})
        fused = await self._fused(lists, 200, threshold)
        out: dict[str, Any] = {
            f"{SEED_NAMES[n]}_res": hits[:20] for n, hits in fused["by_feature"].items() if hits
        }
        if fused["results"]:
            out["unified_res"] = [
                {"image_id": r["image_id"], "score": r["score"]} for r in fused["results"]
            ]
        return out

    def _seed_feature(self, svc: str) -> str:
        # /calculate_{svc}_features: "color" for color, but "global" for global_features
        # (the seed's route is /calculate_global_features).
        name = SEED_SERVICES.get(svc) or SEED_SERVICES.get(f"{svc}_features")
        if name is None or name not in self.extractors:
            raise HTTPException(
                404,
                f"no service {svc!r} here; enabled: "
                f"{', '.join(SEED_NAMES[n] for n in self.extractors if n in SEED_NAMES)}",
            )
        return self._features(name)[0]

    def _seed_mode(self, name: str, k: Any, threshold: Any) -> tuple[int | None, float | None]:
        """The seed's exactly-one-of k / distance_threshold; its threshold is strict (<)."""
        if k not in (None, "") and threshold not in (None, ""):
            raise HTTPException(422, "give k or distance_threshold, not both")
        t = _float_field(threshold, "distance_threshold")
        if t is None:
            return self._k(k), None
        inclusive = np.ceil(t) - 1 if REGISTRY[name].kind == "binary" else np.nextafter(t, -np.inf)
        return None, float(inclusive)

    @app.post("/calculate_{svc}_features")
    async def seed_calculate(
        self,
        svc: str,
        image: UploadFile | None = File(None),
        image_id: str | None = Form(None),
    ) -> Response:
        """Seed service: store one feature of an image (replaces on re-add)."""
        name = self._seed_feature(svc)
        parsed = _int_field(image_id, "image_id")
        data = await self._read(image)
        _, _, status = await self._add(data, parsed, None, [name])
        if status[name] != "ok":
            raise HTTPException(503, status[name])
        return Response(status_code=200)

    @app.post("/delete_{svc}_features")
    async def seed_delete(self, svc: str, body: dict[str, Any] = Body(...)) -> Response:
        """Seed service: delete one feature of an image, by id or by file name."""
        name = self._seed_feature(svc)
        if body.get("file_name"):
            image_id = await self.catalog.id_of.remote(str(body["file_name"]))
            if image_id is None:
                raise HTTPException(404, f"no image with file name {body['file_name']!r}")
        else:
            image_id = _int_field(body.get("image_id"), "image_id")
        assert image_id is not None
        if not await self.indexes[name].has.remote([image_id]):
            raise HTTPException(404, f"image {image_id} has no {name} feature")
        await self._delete(image_id, [name])
        return Response(status_code=200)

    @app.post("/{svc}_get_similar_images_by_id")
    async def seed_by_id(self, svc: str, body: dict[str, Any] = Body(...)) -> JSONResponse:
        """Seed service: ``[{"image_id", "distance", "file_name"}]`` nearest to a stored image."""
        name = self._seed_feature(svc)
        image_id = _int_field(body.get("image_id"), "image_id")
        assert image_id is not None
        k, t = self._seed_mode(name, body.get("k"), body.get("distance_threshold"))
        hits = await self._by_id(name, image_id, k, t, self._search_options(name, body, True))
        return JSONResponse(await self._seed_listing(name, hits))

    @app.post("/image_text_features_get_similar_images_by_text")
    async def seed_by_text(self, body: dict[str, Any] = Body(...)) -> JSONResponse:
        """Seed service: ``[{"image_id", "distance", "file_name"}]`` matching a text (CLIP)."""
        k, t = self._seed_mode("clip", body.get("k"), body.get("distance_threshold"))
        hits = await self._text_hits(body.get("text"), k, t, self._search_options("clip", body))
        return JSONResponse(await self._listing(hits))

    @app.post("/{svc}_get_similar_images_by_image_buffer")
    async def seed_by_image(
        self,
        svc: str,
        image: UploadFile | None = File(None),
        k: str | None = Form(None),
        distance_threshold: str | None = Form(None),
        aqe_n: str | None = Form(None),
        aqe_alpha: str | None = Form(None),
        k_clusters: str | None = Form(None),
        knn_min_matches: str | None = Form(None),
        matching_threshold: str | None = Form(None),
        use_smnn_matching: str | None = Form(None),
        smnn_match_threshold: str | None = Form(None),
        use_ransac: str | None = Form(None),
    ) -> JSONResponse:
        """Seed service: nearest stored images to an upload (phash and local: mirrored too;
        local takes the seed's matching parameters and answers ``matches`` per image)."""
        name = self._seed_feature(svc)
        kk, t = self._seed_mode(name, k, distance_threshold)
        fields = {
            "aqe_n": aqe_n,
            "aqe_alpha": aqe_alpha,
            "k_clusters": k_clusters,
            "knn_min_matches": knn_min_matches,
            "matching_threshold": matching_threshold,
            "use_smnn_matching": use_smnn_matching,
            "smnn_match_threshold": smnn_match_threshold,
            "use_ransac": use_ransac,
        }
        extra = {name: self._search_options(name, fields, seed=True)}
        data = await self._read(image)
        queries, failed = await self._extract(data, [name], query=True)
        if name in failed:
            raise HTTPException(503, failed[name])
        hits = (await self._search(self._searchable(queries), kk, {name: t}, extra))[name]
        return JSONResponse(await self._seed_listing(name, hits))

    @app.post("/get_image_tags")
    async def seed_tags(self, image: UploadFile | None = File(None)) -> JSONResponse:
        """Seed tagger: the tags of an upload, a list of labels (Places365's first, the
        seed's tagger, where it is enabled; then ImageNet's)."""
        doc, _ = await self._analyzed(image, ("places", "tags"), "tagger (places, tags)")
        return JSONResponse(labels(doc))

    @app.post("/get_image_caption")
    async def seed_caption(self, image: UploadFile | None = File(None)) -> JSONResponse:
        """Seed captioner: the caption of an upload, a string."""
        doc, _ = await self._analyzed(image, ("caption",), "captioner")
        return JSONResponse(doc.get("caption", ""))
