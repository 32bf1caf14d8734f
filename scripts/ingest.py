"""Batch ingest of a directory of images into the running app (Ray Data reads the files,
the app's extractors compute the features; the pipeline is ``deployments/ingest.py``).

    python scripts/ingest.py ~/Pictures [--ids-from-filenames] [--features phash,color]

Files already stored are skipped, so an interrupted run picks up where it stopped; a file that
is not a readable image is reported at the end with the reason. The app must be running
(``make serve``). When it has API keys, give a write key: ``IMGSEARCH_API_KEY=KEY`` (or
``--api-key KEY``, which other users of the machine can see in the process list).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from pathlib import Path

import ray
import yaml

from deployments import auth
from deployments.config import load_app_args
from deployments.ingest import BATCHES_PER_ACTOR, IngestError, ingest


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
    p.add_argument(
        "--api-key",
        default=os.environ.get(auth.ENV_KEY),
        help=f"a write key, when the app has API keys (default: ${auth.ENV_KEY})",
    )
    p.add_argument("--batch-size", type=int, default=4, help="files per batch (default 4)")
    p.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="actors reading files (default: 1, or one per four CPUs); files in flight: "
        f"pool size x {BATCHES_PER_ACTOR} x batch size",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.1,
        help="CPUs each actor reserves (default 0.1: it reads files, the app computes)",
    )
    ns = p.parse_args(argv)
    if not Path(ns.directory).expanduser().is_dir():
        p.error(f"{ns.directory} is not a directory")
    if ns.batch_size < 1 or (ns.pool_size is not None and ns.pool_size < 1):
        p.error("--batch-size and --pool-size must be >= 1")
    if ns.cpus_per_actor <= 0:
        p.error("--cpus-per-actor must be > 0")
    return ns


#: Ray's loggers whose progress and warnings stay out of this command's output.
RAY_LOGGERS = ("ray", "ray.data", "ray.serve")
#: The cluster's own warnings that Ray's driver prints on stdout: about Ray's worker pool
#: (Ray Data's actors start many workers at once), not about the ingest.
POOL_NOISE = ("worker processes have been started",)


def quiet_pool_warnings() -> None:
    """Keep the raylet's worker-pool warnings ("12 PYTHON worker processes have been
    started on node ...") off this command's output; they stay in Ray's own logs
    (raylet.out). Ray's driver prints every message that the cluster publishes through
    ``print_to_stdstream`` in its error-listener thread, whatever ``log_to_driver`` says,
    so that function is wrapped; every other message is printed as before."""
    import ray._private.worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "quiet", False):
        return

    def filtered(data: dict, ignore_prefix: bool) -> None:
        lines = data.get("lines") or []
        if lines and all(any(n in line for n in POOL_NOISE) for line in lines):
            return
        printer(data, ignore_prefix)

    filtered.quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = filtered


def keep_ray_logs_in_files() -> Path | None:
    """Send what Ray writes to this process's stderr to a file in the session's log folder
    (returned), and keep ``sys.stderr`` (the progress bar, this command's errors) on the
    terminal. Ray's core worker writes its own log lines ("core_worker.cc: ... actor ...
    constructor arguments in the object store") straight to file descriptor 2, and Ray
    Data and Serve log their progress ("Dataset ... execution finished") through handlers
    made on the stderr of the time; none of it is for the person running this."""
    import ray._private.worker as ray_worker

    node = ray_worker.global_worker.node
    if node is None:
        return None
    # Imported first: their loggers' handlers hold the stderr that is about to move.
    import ray.data
    import ray.serve  # noqa: F401

    path = Path(node.get_logs_dir_path()) / f"ingest-{os.getpid()}.err"
    try:
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # no writable log folder: Ray's lines stay on the terminal
        return None
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    encoding = sys.stderr.encoding
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace")
    # A crash below Python (a fatal error, a segfault) still says where, on the terminal.
    faulthandler.enable(sys.stderr)
    # Ray's loggers do not propagate and their handlers now write to the file: their
    # errors (logged, not raised, e.g. Ray Data's "Exception occurred in user code") also
    # go to the terminal.
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        terminal_errors = logging.StreamHandler(sys.stderr)
        terminal_errors.setLevel(logging.ERROR)
        logger.addHandler(terminal_errors)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run an ingest from the command line; prints the summary and the failed files."""
    ns = parse_args(argv)
    features = [f.strip() for f in ns.features.split(",") if f.strip()] if ns.features else None
    try:
        args = load_app_args(ns.config, ns.app)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # no config, or args the app refuses
        print(f"ingest: {ns.config}: {exc}", file=sys.stderr)
        return 2
    # This writes through Ray, not HTTP: it checks the key against the app's key file.
    problem = auth.client_problem(args.api_keys_file, ns.api_key)
    if problem:
        print(f"ingest: {problem}", file=sys.stderr)
        return 2
    try:
        # A person reads this output: the progress bar, the summary and real errors. The
        # workers' own logs stay in Ray's log files (/tmp/ray/session_latest/logs).
        quiet_pool_warnings()
        ray.init(
            address=ns.address,
            namespace="serve",
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except ConnectionError as exc:  # no cluster at that address: the app is not running
        print(f"ingest: {exc} (start the app first: make serve)", file=sys.stderr)
        return 2
    ray_logs = None
    try:
        ray_logs = keep_ray_logs_in_files()
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        report = ingest(
            ns.directory,
            args,
            ids_from_filenames=ns.ids_from_filenames,
            features=features,
            batch_size=ns.batch_size,
            pool_size=ns.pool_size,
            cpus_per_actor=ns.cpus_per_actor,
            app_name=ns.app,
        )
    except (IngestError, NotADirectoryError) as exc:
        # A wrong directory or feature, or an app that is not running: one line, no traceback.
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        if ray_logs is not None:
            print(f"ingest: Ray's own messages of this run are in {ray_logs}", file=sys.stderr)
        raise
    finally:
        ray.shutdown()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
