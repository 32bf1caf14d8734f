"""Batch ingest of a directory of images into a running app, with Ray Data.

The file paths go through Ray Data (``from_items`` + ``map_batches``); a pool of Ray Data
actors reads the files and has the running app compute each file's features as an add does
(the ingress's ``extract_features``: its extractor replicas, models loaded once, batched with
other uploads, autoscaled), so that an ingest starts in seconds and holds no second copy of a
model. The driver then writes each batch through the index client's write path, as the
ingress does (register, write every feature, take new images out again when a write fails).
A file that is already in the catalog and in every requested index is skipped before
anything is read, so an interrupted run picks up where it stopped. A file that is not a
readable image is reported at the end with the reason, and the run goes on.

``scripts/ingest.py`` is its command line. The app must be running: this looks up its
ingress and its named actors.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

from deployments.config import AppArgs
from extractors import InvalidImage
from index_actors.client import IndexClient, take_rows
from index_actors.interface import reason
from index_actors.kinds import kind_of

#: File suffixes taken as images (compared lower-cased); everything else is not even listed.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: Names per catalog / index query when checking what is already stored: one round trip per
#: chunk keeps a million-file resume check to seconds without one huge message.
CHECK_CHUNK = 2048
#: Ids are stored as signed 64-bit keys (LMDB and FAISS).
MAX_ID = 2**63 - 1


class IngestError(RuntimeError):
    """The ingest cannot start: the app is not running, or a feature is not enabled in it."""


@dataclass
class IngestReport:
    """What one ingest run did."""

    #: Images whose features were written to every requested index.
    stored: int = 0
    #: Images found already stored in the catalog and every requested index.
    skipped: int = 0
    #: (file name relative to the directory, reason) of each file that was not stored.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Wall-clock seconds of the whole run, resume check and actor start-up included.
    seconds: float = 0.0
    #: Enabled features left out because their model is unavailable, with the reason.
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Stored images per second of the whole run."""
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A human summary: the counts, the rate, then every failed file with its reason."""
        lines = [
            f"stored {self.stored}, skipped {self.skipped} (already stored), "
            f"failed {len(self.failed)} in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s)"
        ]
        lines += [f"skipped feature {n}: {why}" for n, why in self.unavailable.items()]
        if self.failed:
            lines.append("not stored:")
            lines += [f"  {name}: {reason}" for name, reason in sorted(self.failed)]
        return "\n".join(lines)


def list_images(directory: str | Path) -> list[str]:
    """Image files under ``directory``, recursively, as sorted POSIX paths relative to it.

    Names starting with a dot are left out, directories included: they are hidden files such
    as macOS ``._IMG_1.jpg`` resource forks (not images) and thumbnail caches. Names starting
    with ``_`` are kept (cameras write ``_DSC1234.JPG``), which is one reason this lists the
    files itself instead of letting Ray Data list the directory: its listing drops them.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                names.append((rel / name).as_posix())
    return sorted(names)


def id_from_name(file_name: str) -> int:
    """The image id a file name gives with ``--ids-from-filenames``: its integer stem.

    Raises ``ValueError`` with the reason for a stem that is not a non-negative 64-bit integer.
    """
    stem = PurePosixPath(file_name).stem
    if not (stem.isascii() and stem.isdigit()):
        raise ValueError(f"file name stem {stem!r} is not an integer id (--ids-from-filenames)")
    image_id = int(stem)
    if image_id > MAX_ID:
        raise ValueError(f"id {image_id} from the file name is over 2^63-1")
    return image_id


#: Batches one ingest actor has in flight at once: it only reads files and awaits the app,
#: so one process keeps several batches going (each actor process costs ~2 CPU-s to start).
BATCHES_PER_ACTOR = 2


class FeatureBatch:
    """Ray Data callable class: reads a batch of files and has the app compute the
    features of each (``Ingress.extract_features``, every file of the batch at once).
    Asynchronous: an actor awaits ``BATCHES_PER_ACTOR`` batches side by side.

    Adds the columns ``<feature>_feature`` (one row per file, zeros for a file that failed;
    for local features one variable-length array per file) and ``<feature>_error`` (``""``
    when the feature was computed, else why not) for each feature. The actor reads the files
    itself: shipping the bytes from read tasks through the object store cost more than the
    features (docs/architecture.md).
    """

    def __init__(
        self, app_name: str, features: list[str], layouts: dict[str, tuple[str, int]]
    ) -> None:
        from ray import serve

        self.app = serve.get_app_handle(app_name)
        self.features = features
        #: feature -> (dtype, values per row) of its column.
        self.layouts = layouts

    @staticmethod
    def _read(path: str) -> bytes | InvalidImage:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            return InvalidImage(f"unreadable file: {exc.strerror or exc}")

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every feature of every file of the batch."""
        # Off the event loop: the actor's other batch awaits the app meanwhile.
        blobs = await asyncio.gather(
            *(asyncio.to_thread(self._read, str(p)) for p in batch["path"])
        )
        calls = [
            self.app.extract_features.remote(b, self.features) if isinstance(b, bytes) else b
            for b in blobs
        ]
        results = [c if isinstance(c, InvalidImage) else await c for c in calls]
        out = dict(batch)
        for name in self.features:
            dtype, width = self.layouts[name]
            # A failed file keeps its empty row, never written (ragged kinds: one
            # variable-length array per file, which Ray Data carries as ragged tensors).
            rows = kind_of(name).ingest_column(len(blobs), width, np.dtype(dtype))
            errors = np.full(len(blobs), "", object)
            for j, result in enumerate(results):
                if isinstance(result, InvalidImage):
                    errors[j] = str(result)
                elif name in result[0]:
                    rows[j] = result[0][name]
                else:
                    errors[j] = result[1].get(name, "not computed")
            out[f"{name}_feature"] = rows
            out[f"{name}_error"] = errors
        return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Writer:
    """The driver side: resume check before, batched writes through the index client after."""

    def __init__(self, client: IndexClient, ids_from_filenames: bool, report: IngestReport):
        self.client = client
        self.ids_from_filenames = ids_from_filenames
        self.report = report
        #: file name -> the id it must get (None: the catalog chooses), for pending files.
        self.wanted: dict[str, int | None] = {}

    def plan(self, names: list[str]) -> list[str]:
        """The file names still to ingest; counts the skipped ones, records the bad ones."""
        candidates: dict[str, int | None] = {}
        owner: dict[int, str] = {}
        for name in names:
            if not self.ids_from_filenames:
                candidates[name] = None
                continue
            try:
                image_id = id_from_name(name)
            except ValueError as exc:
                self.report.failed.append((name, str(exc)))
                continue
            if image_id in owner:
                self.report.failed.append((name, f"id {image_id} is also {owner[image_id]!r}"))
                continue
            owner[image_id] = name
            candidates[name] = image_id

        pending = []
        for chunk in _chunks(list(candidates), CHECK_CHUNK):
            known, stored = asyncio.run(self._stored(list(chunk)))
            for name, known_id in zip(chunk, known, strict=True):
                wanted = candidates[name]
                if known_id is not None and wanted is not None and known_id != wanted:
                    # The catalog would refuse to give the name a second id.
                    self.report.failed.append(
                        (name, f"file name already belongs to image {known_id}, not {wanted}")
                    )
                elif known_id in stored and (wanted is None or wanted == known_id):
                    self.report.skipped += 1
                else:
                    pending.append(name)
                    self.wanted[name] = wanted
        return pending

    async def _stored(self, names: list[str]) -> tuple[list[int | None], set[int]]:
        known = await self.client.ids_of(names)
        ids = [i for i in known if i is not None]
        return known, await self.client.stored_everywhere(ids, self.client.features)

    def write(self, batch: dict[str, np.ndarray], names: list[str]) -> None:
        """Store a computed batch through the write path. A file that any extractor
        rejected is stored nowhere; one whose write failed is reported (and, if it was new,
        taken out again: the next run redoes it)."""
        good = []
        for j, name in enumerate(names):
            errors = [str(batch[f"{f}_error"][j]) for f in self.client.features]
            errors = list(dict.fromkeys(e for e in errors if e))  # one decoder error, once
            if errors:
                self.report.failed.append((name, "; ".join(errors)))
            else:
                good.append(j)
        if not good:
            return
        images: list[tuple[str | None, int | None]] = [
            (names[j], self.wanted[names[j]]) for j in good
        ]
        columns = {f: take_rows(batch[f"{f}_feature"], good) for f in self.client.features}
        for j, stored in zip(good, asyncio.run(self.client.store(images, columns)), strict=True):
            if stored.conflict is not None:
                self.report.failed.append((names[j], stored.conflict))
            elif not stored.ok:
                error = next(s for s in stored.status.values() if s != "ok")
                why = error.removeprefix("error: ")
                self.report.failed.append((names[j], f"index write failed: {why}"))
            else:
                self.report.stored += 1


def ingest(
    directory: str | Path,
    args: AppArgs,
    ids_from_filenames: bool = False,
    features: list[str] | None = None,
    batch_size: int = 4,
    pool_size: int | None = None,
    cpus_per_actor: float = 0.1,
    progress: bool = True,
    client: IndexClient | None = None,
    app_name: str | None = None,
) -> IngestReport:
    """Ingest every image under ``directory`` into the running app described by ``args``.

    Needs a connected Ray session (``ray.init(address=..., namespace="serve")``) on which the
    app runs: the Serve application ``app_name`` (default: ``args.name``, as
    ``configs/serve.yaml`` names both) computes the features. ``features`` (default: every
    enabled one) must be enabled in ``args`` and in the app; a file is skipped when its name
    is in the catalog and its id in each of their indexes. With ``ids_from_filenames`` the
    integer file stem is the image id. ``pool_size`` actors (by default 1, or one per four
    CPUs of the cluster), each reserving ``cpus_per_actor`` CPUs, read batches of
    ``batch_size`` files, ``BATCHES_PER_ACTOR`` batches at a time, and send every file of
    a batch to the app at once. A feature whose model is unavailable in the app is left
    out (reported) unless it was asked for by name.
    ``client``: the app's actors (default: found by the app's name).
    """
    from ray import serve

    if not ray.is_initialized():
        raise IngestError("connect to the app's Ray cluster first (ray.init(address=...))")
    started = time.perf_counter()
    requested = bool(features)
    features = list(dict.fromkeys(features or args.enabled))
    wrong = [f for f in features if f not in args.enabled]
    if wrong or not features:
        raise IngestError(
            f"features {wrong or features} are not enabled; enabled: {', '.join(args.enabled)}"
        )
    root = Path(directory).expanduser().resolve()
    report = IngestReport()
    app_name = app_name or args.name
    try:
        infos = serve.get_app_handle(app_name).extractor_infos.remote().result()
    except Exception as exc:  # no such app (Serve raises several kinds): say what to do
        raise IngestError(
            f"no running app {app_name!r} to compute the features ({exc}); start it first "
            "(make serve)"
        ) from None
    for name in list(features):
        info = infos.get(name)
        if info is None:
            raise IngestError(f"{name} is not enabled in the running app {app_name!r}")
        if not info["available"]:
            # Asked for by name: an error. By default: the other features still go in.
            if requested:
                raise IngestError(f"{name} is unavailable: {info['reason']}")
            report.unavailable[name] = str(info["reason"])
            features.remove(name)
    if not features:
        raise IngestError(f"no feature can be computed: {report.unavailable}")
    try:
        client = client or IndexClient.connect(args.name, args.shard_counts(features))
        client = client.subset(features)
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    # Each column's layout, as the app's extractors have it.
    layouts = {f: tuple(infos[f]["column"]) for f in features}
    # Files in flight: pool_size x BATCHES_PER_ACTOR x batch_size, by default one actor per
    # 4 of the cluster's CPUs (1 at least): 8 below 8 CPUs, which keeps the app's extractors
    # busy with batches side by side on 2 cores (measured in docs/architecture.md), and
    # 8 more per 4 CPUs, where extract_cpu (8 in flight a replica) gets replicas to fill.
    pool_size = pool_size or max(1, int(ray.cluster_resources().get("CPU", 1)) // 4)
    writer = _Writer(client, ids_from_filenames, report)
    try:
        pending = writer.plan(list_images(root))
    except ray.exceptions.RayError as exc:  # a store that is down (PostgreSQL): say which
        raise IngestError(f"cannot check what is stored: {reason(exc)}") from None

    if pending:
        by_path = {str(root / name): name for name in pending}
        # One block per batch.
        blocks = -(-len(by_path) // batch_size)
        ds: ray.data.Dataset = ray.data.from_items(
            [{"path": p} for p in by_path], override_num_blocks=blocks
        )
        # The app's replicas hold most of a laptop's CPUs, and the actors only read files
        # and wait: ask for no more than is free, or they would wait for CPUs forever.
        free = ray.available_resources().get("CPU", 0.0)
        cpus_per_actor = max(0.01, min(cpus_per_actor, 0.9 * free / pool_size))
        ds = ds.map_batches(
            FeatureBatch,
            fn_constructor_kwargs={"app_name": app_name, "features": features, "layouts": layouts},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(
                size=min(pool_size, blocks), max_concurrent_calls_per_actor=BATCHES_PER_ACTOR
            ),
            num_cpus=cpus_per_actor,
        )
        # One progress bar, of images written; Ray Data's per-operator bars (or, off a
        # terminal, its progress log lines every few seconds) would interleave with it.
        ds.context.enable_progress_bars = False
        ds.context.print_on_execution_start = False  # its plan and settings, for debugging
        with tqdm(total=len(pending), unit="img", desc="ingest", disable=not progress) as bar:
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                names = [by_path[str(p)] for p in batch["path"]]
                writer.write(batch, names)
                bar.update(len(names))
                bar.set_postfix(failed=len(report.failed), refresh=False)

    report.seconds = time.perf_counter() - started
    return report
