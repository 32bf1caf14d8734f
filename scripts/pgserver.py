"""A throwaway PostgreSQL server in a folder (for the benchmarks and tests): no TCP port, a
Unix socket in the folder, gone with it.

    with pg_server(Path("/tmp/pg")) as dsn:
        psycopg.connect(dsn)

It needs Debian's ``postgresql`` package (``initdb`` and ``pg_ctl``). PostgreSQL refuses to
run as root: as root the server runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


class NoPostgres(RuntimeError):
    """PostgreSQL's server programs are not installed (or cannot run here)."""


def bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off the PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if not versions:
        raise NoPostgres("no initdb: install PostgreSQL (apt-get install postgresql)")
    return Path(versions[-1]).parent


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _as_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(*cmd: str) -> None:
    done = subprocess.run([*_as_user(), *cmd], capture_output=True, text=True, check=False)
    if done.returncode:
        raise NoPostgres(f"{Path(cmd[0]).name} failed: {done.stderr.strip()[-500:]}")


def start(folder: Path) -> None:
    """Start (again) the server of ``folder``; waits until it accepts connections."""
    sock = folder / "sock"
    # No TCP listener (nothing to collide with), the socket in our folder, no fsync: a
    # benchmark or test server holds nothing worth a crash-safe write.
    opts = f"-c listen_addresses='' -c unix_socket_directories='{sock}' -c fsync=off"
    data, log = str(folder / "data"), str(folder / "log")
    _run(str(bindir() / "pg_ctl"), "-D", data, "-o", opts, "-w", "-l", log, "start")


def stop(folder: Path) -> None:
    """Stop the server of ``folder`` at once, as a crash would."""
    _run(str(bindir() / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def pg_server(folder: Path) -> Iterator[str]:
    """Start a server whose data and socket are in ``folder``; yields a libpq DSN."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sock, "postgres")
    _run(
        str(bindir() / "initdb"),
        "-D",
        str(folder / "data"),
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
    )
    start(folder)
    try:
        yield f"host={sock} dbname=postgres user=postgres"
    finally:
        stop(folder)
