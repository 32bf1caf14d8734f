"""Batch ingest of a directory of images into the running app's index actors, with Ray Data.

    python scripts/ingest.py ~/Pictures [--ids-from-filenames] [--features phash,color]

The file paths go through Ray Data (``from_items`` + ``map_batches``); the features are
computed by the *same* extractor classes the Serve deployments use, in a Ray Data actor pool
whose actors read the files themselves; the driver then
writes each batch the way the ingress does (catalog first, then every index actor). A file
that is already in the catalog and in every requested index is skipped before anything is
read, so an interrupted run picks up where it stopped. A file that is not a readable image is
reported at the end with the reason, and the run goes on.

The app must be running (``make serve``): this script only looks up its named actors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import ray
import yaml
from tqdm import tqdm

from deployments.config import AppArgs
from extractors import REGISTRY, InvalidImage, WeightsUnavailable, build_extractor
from extractors.base import encode_doc

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


class FeatureBatch:
    """Ray Data callable class: reads a batch of files and computes features of each.

    Adds the columns ``<feature>_feature`` (one row per file, zeros for a file that failed;
    for local features one variable-length array per file) and ``<feature>_error`` (``""``
    when the feature was computed, else why not) for each of its features. The actor reads
    the files itself: shipping the bytes from read tasks through the object store cost more
    than the features (measured: 40-60 against 70-78 images/s on 2 cores).
    """

    def __init__(self, features: list[str], options: dict[str, dict[str, Any]]) -> None:
        self.extractors = [build_extractor(f, options[f]) for f in features]
        for extractor in self.extractors:
            extractor.load()

    @staticmethod
    def _read(path: str) -> bytes | InvalidImage:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            return InvalidImage(f"unreadable file: {exc.strerror or exc}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute every feature of this pool for every file of the batch."""
        blobs = [self._read(str(p)) for p in batch["path"]]
        readable = [j for j, b in enumerate(blobs) if isinstance(b, bytes)]
        data = [b for b in blobs if isinstance(b, bytes)]
        out = dict(batch)
        for extractor in self.extractors:
            dtype = np.dtype(extractor.dtype)
            rows: np.ndarray
            if extractor.kind in ("keypoints", "text"):
                # One variable-length array per file (Ray Data carries them as ragged
                # tensors); a failed file gets an empty feature, never written.
                empty = np.zeros(4, np.uint8) if extractor.kind == "keypoints" else encode_doc({})
                rows = np.empty(len(blobs), dtype=object)
                for j in range(len(blobs)):
                    rows[j] = empty
            else:
                rows = np.zeros((len(blobs), extractor.nbytes // dtype.itemsize), dtype=dtype)
            errors = np.array([str(b) if not isinstance(b, bytes) else "" for b in blobs], object)
            results = extractor.extract_bytes(data)
            for j, result in zip(readable, results, strict=True):
                if isinstance(result, InvalidImage):
                    errors[j] = str(result)
                else:
                    rows[j] = result
            out[f"{extractor.name}_feature"] = rows
            out[f"{extractor.name}_error"] = errors
        return out


def _actors(args: AppArgs, features: list[str]) -> tuple[Any, dict[str, Any]]:
    """The running app's catalog and index actors; a clear error when the app is not up."""
    names = [f"{args.name}:catalog"] + [f"{args.name}:index:{f}" for f in features]
    found = []
    for name in names:
        try:
            found.append(ray.get_actor(name, namespace="serve"))
        except ValueError:
            raise IngestError(
                f"no actor {name!r} in Ray namespace 'serve': is the app {args.name!r} "
                "running on this Ray cluster (make serve)?"
            ) from None
    return found[0], dict(zip(features, found[1:], strict=True))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(exc: BaseException) -> str:
    # ray.get re-raises an actor's exception wrapped; its cause carries the plain message.
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)


class _Writer:
    """The driver side: resume check before, batched writes into the actors after."""

    def __init__(
        self,
        catalog: Any,
        indexes: dict[str, Any],
        ids_from_filenames: bool,
        report: IngestReport,
    ) -> None:
        self.catalog = catalog
        self.indexes = indexes
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
            known = ray.get(self.catalog.ids_of.remote(list(chunk)))
            ids = [i for i in known if i is not None]
            stored = set(ids)
            if ids:
                for present in ray.get([a.has.remote(ids) for a in self.indexes.values()]):
                    stored &= set(present)
            for name, image_id in zip(chunk, known, strict=True):
                wanted = candidates[name]
                if image_id is not None and wanted is not None and image_id != wanted:
                    # The catalog would refuse to give the name a second id.
                    self.report.failed.append(
                        (name, f"file name already belongs to image {image_id}, not {wanted}")
                    )
                elif image_id in stored and (wanted is None or wanted == image_id):
                    self.report.skipped += 1
                else:
                    pending.append(name)
                    self.wanted[name] = wanted
        return pending

    def _register(self, entries: list[tuple[str, int | None]]) -> list[tuple[int, str] | None]:
        try:
            return list(ray.get(self.catalog.register_many.remote(entries)))
        except ValueError:
            # register_many is all or nothing; a conflict that arose since the plan (an upload
            # through the API meanwhile) should cost only its own file, not the batch.
            out: list[tuple[int, str] | None] = []
            for name, image_id in entries:
                try:
                    out.append(ray.get(self.catalog.register.remote(name, image_id)))
                except ValueError as exc:
                    self.report.failed.append((name, _reason(exc)))
                    out.append(None)
            return out

    def write(self, batch: dict[str, np.ndarray], names: list[str]) -> None:
        """Register a computed batch in the catalog, then add its features to every index.

        Catalog first, as the ingress does: an index never holds an id the catalog does not
        know. A file that any extractor rejected is stored nowhere.
        """
        good = []
        for j, name in enumerate(names):
            errors = [str(batch[f"{f}_error"][j]) for f in self.indexes]
            errors = list(dict.fromkeys(e for e in errors if e))  # one decoder error, once
            if errors:
                self.report.failed.append((name, "; ".join(errors)))
            else:
                good.append(j)
        if not good:
            return
        registered = self._register([(names[j], self.wanted[names[j]]) for j in good])
        rows = [j for j, reg in zip(good, registered, strict=True) if reg is not None]
        ids = [reg[0] for reg in registered if reg is not None]
        if not ids:
            return
        try:
            ray.get(
                [
                    actor.add.remote(ids, np.ascontiguousarray(batch[f"{f}_feature"][rows]))
                    for f, actor in self.indexes.items()
                ]
            )
        except ray.exceptions.RayError as exc:
            # The batch stays registered with some features missing: the next run (resume)
            # redoes exactly these files, so report them instead of stopping the whole run.
            self.report.failed += [(names[j], f"index write failed: {_reason(exc)}") for j in rows]
            return
        self.report.stored += len(ids)


def ingest(
    directory: str | Path,
    args: AppArgs,
    ids_from_filenames: bool = False,
    features: list[str] | None = None,
    batch_size: int = 32,
    pool_size: int | None = None,
    cpus_per_actor: float = 0.25,
    progress: bool = True,
    model_pool_size: int = 1,
    local_pool_size: int | None = None,
    ocr_pool_size: int = 1,
    caption_pool_size: int = 1,
) -> IngestReport:
    """Ingest every image under ``directory`` into the running app described by ``args``.

    Needs a connected Ray session (``ray.init(address=..., namespace="serve")``) on which the
    app runs. ``features`` (default: every enabled one) must be enabled in ``args``; a file is
    skipped when its name is in the catalog and its id in each of their indexes. With
    ``ids_from_filenames`` the integer file stem is the image id. ``pool_size`` actors (by
    default one per CPU of the cluster), each reserving ``cpus_per_actor`` CPUs, compute
    batches of ``batch_size`` files; ``model_pool_size`` actors compute the model features
    (global, clip, tags), their torch threads sharing the cluster's CPUs;
    ``local_pool_size`` actors (default: as ``pool_size``) the local features,
    ``ocr_pool_size`` OCR and ``caption_pool_size`` captions, the slow ones. A feature whose
    model is unavailable is left out (reported) unless it was asked for by name.
    """
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
    for name in list(features):
        try:
            build_extractor(name, args.extractor_options(name)).load()
        except WeightsUnavailable as exc:
            # Asked for by name: an error. By default: the other features still go in.
            if requested:
                raise IngestError(f"{name} is unavailable: {exc}") from None
            report.unavailable[name] = str(exc)
            features.remove(name)
    if not features:
        raise IngestError(f"no feature can be computed: {report.unavailable}")
    catalog, indexes = _actors(args, features)
    pool_size = pool_size or max(1, int(ray.cluster_resources().get("CPU", 1)))
    writer = _Writer(catalog, indexes, ids_from_filenames, report)
    try:
        pending = writer.plan(list_images(root))
    except ray.exceptions.RayError as exc:  # a store that is down (PostgreSQL): say which
        raise IngestError(f"cannot check what is stored: {_reason(exc)}") from None

    if pending:
        by_path = {str(root / name): name for name in pending}
        # About one block per batch: a task per file costs more in overhead than the work.
        blocks = -(-len(by_path) // batch_size)
        ds: ray.data.Dataset = ray.data.from_items(
            [{"path": p} for p in by_path], override_num_blocks=blocks
        )
        # The light features share one pool: each is a few ms per image, and one pass per
        # batch reads each file once. Models get a pool of their own, sized apart: a network
        # per actor costs memory, and torch spreads one actor over several cores. Local
        # features (SIFT, ~100x phash's time), OCR and captions (slower still) get one each,
        # so that they do not hold the others up.
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pools = [
            (group, min(size, blocks), threads)
            for pool, size, threads in (
                ("light", pool_size, None),
                ("local", local_pool_size or pool_size, None),
                ("models", model_pool_size, max(1, cpus // model_pool_size)),
                ("ocr", ocr_pool_size, None),
                ("caption", caption_pool_size, max(1, cpus // caption_pool_size)),
            )
            if (group := [f for f in features if REGISTRY[f].pool == pool])
        ]
        # The app's replicas hold most of a laptop's CPUs: ask for no more than is free, or
        # the pools would wait for CPUs forever (reservations are bookkeeping; the actors
        # share the cores either way).
        free = ray.available_resources().get("CPU", 0.0)
        actors = sum(size for _, size, _ in pools)
        cpus_per_actor = max(0.01, min(cpus_per_actor, 0.9 * free / actors))
        for group, size, threads in pools:
            extra = {"threads": threads} if threads else {}
            options = {f: {**extra, **args.extractor_options(f)} for f in group}
            ds = ds.map_batches(
                FeatureBatch,
                fn_constructor_kwargs={"features": group, "options": options},
                batch_size=batch_size,
                batch_format="numpy",
                # A fixed pool: extractors load once per actor. A fraction of a CPU each,
                # so that beside the app's own replicas the pools fit a 2-core laptop.
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=cpus_per_actor,
            )
        # One progress bar, of images written; Ray Data's per-operator bars (or, off a
        # terminal, its progress log lines every few seconds) would interleave with it.
        ds.context.enable_progress_bars = False
        with tqdm(total=len(pending), unit="img", desc="ingest", disable=not progress) as bar:
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                names = [by_path[str(p)] for p in batch["path"]]
                writer.write(batch, names)
                bar.update(len(names))
                bar.set_postfix(failed=len(report.failed), refresh=False)

    report.seconds = time.perf_counter() - started
    return report


def load_app_args(config: str | Path, app: str) -> AppArgs:
    """The validated ``args`` of the application named ``app`` in a Serve config file."""
    with open(config) as f:
        cfg = yaml.safe_load(f) or {}
    apps = cfg.get("applications") or []
    for entry in apps:
        if entry.get("name") == app:
            return AppArgs.model_validate(entry.get("args") or {})
    found = ", ".join(str(e.get("name")) for e in apps) or "none"
    raise ValueError(f"no application named {app!r} in {config} (found: {found})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("directory", help="directory of images, read recursively")
    p.add_argument("--config", default="configs/serve.yaml", help="the app's Serve config")
    p.add_argument("--app", default="imgsearch", help="application name in the config")
    p.add_argument("--address", default="auto", help="Ray cluster address the app runs on")
    p.add_argument(
        "--ids-from-filenames",
        action="store_true",
        help="use each file's integer stem (1234.jpg -> 1234) as its image id",
    )
    p.add_argument("--features", help="comma list of features (default: every enabled one)")
    p.add_argument("--batch-size", type=int, default=32, help="files per batch (default 32)")
    p.add_argument(
        "--pool-size", type=int, default=None, help="extractor actors (default: one per CPU)"
    )
    p.add_argument(
        "--model-pool-size", type=int, default=1, help="actors for model features (default 1)"
    )
    p.add_argument(
        "--local-pool-size",
        type=int,
        default=None,
        help="actors for local features (default: as --pool-size)",
    )
    p.add_argument("--ocr-pool-size", type=int, default=1, help="actors for OCR (default 1)")
    p.add_argument(
        "--caption-pool-size", type=int, default=1, help="actors for captions (default 1)"
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.25,
        help="CPUs each actor (and read task) reserves (default 0.25)",
    )
    ns = p.parse_args(argv)
    if not Path(ns.directory).expanduser().is_dir():
        p.error(f"{ns.directory} is not a directory")
    if (
        ns.batch_size < 1
        or (ns.pool_size is not None and ns.pool_size < 1)
        or ns.model_pool_size < 1
        or (ns.local_pool_size is not None and ns.local_pool_size < 1)
        or min(ns.ocr_pool_size, ns.caption_pool_size) < 1
        or ns.cpus_per_actor <= 0
    ):
        p.error("--batch-size and the pool sizes must be >= 1, --cpus-per-actor > 0")
    return ns


def main(argv: list[str] | None = None) -> int:
    """Run an ingest from the command line; prints the summary and the failed files."""
    ns = parse_args(argv)
    features = [f.strip() for f in ns.features.split(",") if f.strip()] if ns.features else None
    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # no config, or args the app refuses
        print(f"ingest: {ns.config}: {exc}", file=sys.stderr)
        return 2
    try:
        ray.init(address=ns.address, namespace="serve", logging_level=logging.WARNING)
    except ConnectionError as exc:  # no cluster at that address: the app is not running
        print(f"ingest: {exc} (start the app first: make serve)", file=sys.stderr)
        return 2
    try:
        report = ingest(
            ns.directory,
            args,
            ids_from_filenames=ns.ids_from_filenames,
            features=features,
            batch_size=ns.batch_size,
            pool_size=ns.pool_size,
            cpus_per_actor=ns.cpus_per_actor,
            model_pool_size=ns.model_pool_size,
            local_pool_size=ns.local_pool_size,
            ocr_pool_size=ns.ocr_pool_size,
            caption_pool_size=ns.caption_pool_size,
        )
    except (IngestError, NotADirectoryError) as exc:
        # A wrong directory or feature, or an app that is not running: one line, no traceback.
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
