"""``make serve``: the preflight, then ``serve run CONFIG``; on Ctrl-C or SIGTERM, every
process of the app stopped, so that the next start finds its port free.

    python scripts/serve.py [configs/serve.yaml]

Stopped by itself, ``serve run`` leaves HAProxy behind: Serve 2.60 starts it from an actor
and does not stop it when its Ray session ends, so it lives on, reparented to init, holding
the HTTP port, and the next start fails with "Address already in use". Here ``serve run``
runs in a session of its own, which every process it starts inherits (Ray's do not leave it,
nor does HAProxy). A stop asks ``serve run`` to shut Serve down as Ctrl-C does, then ends
whatever of the session is left: SIGTERM, then SIGKILL after ``GRACE_S``. Linux only (it
finds the session's processes under /proc), as the app is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from scripts import preflight

#: How long ``serve run`` gets to shut Serve down (the ingress drains its connections for
#: 30 s first), then what is left of it to end. A second Ctrl-C skips the wait.
SHUTDOWN_S = 60.0
GRACE_S = 5.0
#: Ray settings for the app's session, each overridable from the environment. Serve's
#: controller steps its loop every 0.1 s by default: the idle app's largest CPU user
#: (0.041 of a core on 2 cores; 0.015 at 0.5 s, GCS 0.015 -> 0.008). Deploys and scaling
#: react within half a second instead.
APP_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}


def app_env() -> dict[str, str]:
    """The environment ``serve run`` gets: this one, with ``APP_ENV`` where it is unset."""
    return {**APP_ENV, **os.environ}


def processes(names: tuple[str, ...]) -> dict[int, str]:
    """pid -> command line of every live process (zombies left out) whose command line
    contains one of ``names``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        if state != "Z" and any(name in cmd for name in names):
            found[int(entry)] = cmd.strip()
    return found


def session_processes(sid: int) -> list[int]:
    """The live processes of session ``sid`` (this one excepted)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
    return found


def end_session(sid: int, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM every process of session ``sid``, SIGKILL what outlives ``grace_s``; returns
    the pids that had to be killed."""
    for pid in session_processes(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = session_processes(sid)
    for pid in killed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return killed


def main(argv: list[str] | None = None) -> int:
    """Run the app until it exits or is told to stop; its exit status (130/143 when it was
    stopped by SIGINT/SIGTERM, 2 when the preflight refused the config)."""
    args = sys.argv[1:] if argv is None else argv
    config = args[0] if args else "configs/serve.yaml"
    if preflight.main([config]) != 0:
        return 2
    serve = Path(sys.executable).with_name("serve")
    child = subprocess.Popen([str(serve), "run", config], start_new_session=True, env=app_env())
    stopped: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while child.poll() is None and not stopped:
        time.sleep(0.2)
    if stopped:
        print("serve: stopping the app (Ctrl-C again: at once)", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)  # serve run's own stop: serve.shutdown()
        deadline = time.monotonic() + SHUTDOWN_S
        while child.poll() is None and len(stopped) == 1 and time.monotonic() < deadline:
            time.sleep(0.2)
    left = end_session(child.pid)
    if left:
        print(f"serve: ended {len(left)} process(es) the app left", file=sys.stderr)
    if stopped:
        return 128 + stopped[0]
    return child.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
