"""``python -m bench.compare OLD_REF [--section http] [--rounds 3] [-- extra bench args]``:
one bench section on an old commit against the same section on this working tree, in one run,
so that a refactor can be shown not to slow the Serve path down.

The old commit is checked out in a temporary ``git worktree add --detach`` beside this tree
(so that both see the same ``../shared/photos``), removed at the end. Each round runs the
section once in each tree, alternating (old first in odd rounds, new first in even ones, so
that drift and warm caches favour neither), each as a subprocess with its cwd and
``PYTHONPATH`` set to its tree and the same Python: Ray's workers inherit the driver's
environment, so they import that tree's code too. A tree with a ``bench/`` package runs
``python -m bench``; an older one ``scripts/bench.py``; both with ``--only SECTION --json``.

Per metric row of the section it prints the old value, the new value and new/old for each
round, and the median ratio. The row's unit says which way is good: latencies, sizes and
seconds (``ms``, ``s``, ``GiB``, ``KB``) are "higher is worse", rates (``/s``), recalls and
accuracies "higher is better". The section's in-process peer is printed beside as a
drift check: when the peer's own new/old is far from 1, the machine changed pace mid-run.

Light defaults per section (``LIGHT``: http stores 2000 images and times 60 searches, a few
minutes a run here) go before the extra arguments, so that an extra ``--n-http 10000``
overrides them. Logs and JSON of every run stay in a folder named at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import SECTIONS
from bench.common import fmt

ROOT = Path(__file__).resolve().parent.parent

#: Arguments that keep one run of a section to a few minutes on 2 cores; extra arguments
#: after ``--`` come later on the command line, so they win.
LIGHT: dict[str, list[str]] = {
    "http": ["--n-http", "2000", "--http-searches", "60"],
    "search": ["--n-hashes", "200000", "--searches", "100"],
    "ingest": ["--ingest-sizes", "40"],
    "memory": ["--idle-s", "10"],
    "phash": ["--repeat", "3"],
    "vectors": ["--n-vectors", "100000"],
    "quality": ["--distractors", "100"],
    "crops": ["--crop-distractors", "200", "--crop-scale", "1000"],
    "text": ["--n-texts", "2000"],
}
#: A ratio within this of 1 is reported as "same".
TOLERANCE = 0.05


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; what follows ``--`` goes to every bench run."""
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("old_ref", metavar="OLD_REF", help="the old commit (any git revision)")
    p.add_argument("--section", default="http", choices=SECTIONS, help="bench section (http)")
    p.add_argument("--rounds", type=int, default=3, help="runs in each tree (default 3)")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for both trees (default: this one, the project's venv)",
    )
    p.add_argument(
        "--timeout-s", type=float, default=1200, help="limit of one bench run (default 1200)"
    )
    p.add_argument("--logs", type=Path, help="folder for logs and JSON (default: a new temp one)")
    p.add_argument(
        "--no-light",
        action="store_true",
        help="the bench's own defaults instead of LIGHT's (" + ", ".join(LIGHT) + ")",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    clash = [a for a in extra if a.split("=")[0] in ("--only", "--json")]
    if clash:
        p.error(f"{clash[0]} is set by compare (use --section)")
    args.extra = ([] if args.no_light else LIGHT.get(args.section, [])) + extra
    return args


# --- git ---------------------------------------------------------------------------------------
def git(*args: str) -> str:
    """Run git in this tree; its stdout, stripped."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def add_worktree(ref: str) -> tuple[str, Path]:
    """The commit of ``ref``, checked out detached beside this tree (a sibling folder, so
    that its ``../shared`` is ours)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = ROOT.parent / f".bench-compare-{sha[:10]}-{os.getpid()}"
    git("worktree", "add", "--detach", str(path), sha)
    return sha, path


def remove_worktree(path: Path) -> None:
    """Remove a worktree made by ``add_worktree`` (what the runs left in it included)."""
    done = subprocess.run(
        ["git", "worktree", "remove", "--force", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        print(f"compare: could not remove worktree {path}: {done.stderr.strip()}", flush=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True, check=False)


# --- one bench run -----------------------------------------------------------------------------
def bench_command(tree: Path, python: str, section: str, extra: list[str], out: Path) -> list[str]:
    """The bench command line of a tree: ``-m bench`` where it has the package, else the old
    ``scripts/bench.py``."""
    if (tree / "bench" / "__main__.py").exists():
        entry = ["-m", "bench"]
    elif (tree / "scripts" / "bench.py").exists():
        entry = ["scripts/bench.py"]
    else:
        raise SystemExit(f"{tree}: neither bench/__main__.py nor scripts/bench.py")
    return [python, *entry, "--only", section, *extra, "--json", str(out)]


def run_bench(
    label: str, tree: Path, cmd: list[str], log: Path, timeout_s: float
) -> tuple[list[dict[str, Any]], float]:
    """Run one bench in ``tree`` (cwd and PYTHONPATH), its output to ``log``; its JSON rows
    (the path after ``--json``) and wall seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)  # this tree's code first, for the driver and Ray's workers
    env.setdefault("HF_HUB_OFFLINE", "1")  # as `make bench`
    out = Path(cmd[cmd.index("--json") + 1])
    start = time.perf_counter()
    with log.open("w") as f:
        f.write(f"$ cd {tree} && PYTHONPATH={tree} {' '.join(cmd)}\n")
        f.flush()
        # A session of its own: on a timeout the whole group (the driver, and the Ray
        # cluster it started) is ended, nothing else on the machine.
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end(proc)
            code = None
        except KeyboardInterrupt:
            _end(proc)
            raise
    seconds = time.perf_counter() - start
    if code != 0 or not out.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        why = "timed out" if code is None else f"exit {code}"
        raise SystemExit(f"compare: {label} run failed ({why}); {log}:\n{tail}")
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows, seconds


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End a bench run's process group: SIGTERM (Ray shuts its cluster down), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:  # already gone
        pass


# --- the comparison ----------------------------------------------------------------------------
def direction(metric: str) -> str:
    """Which way is good, from the unit in the metric's name."""
    m = metric.lower()
    if "/s" in m or "recall" in m or "accuracy" in m or "found" in m:
        return "higher is better"
    if re.search(r"\b(ms|s|gib|mib|kb|hamming)\b", m):
        return "higher is worse"
    return "direction unknown"


def ratio(new: Any, old: Any) -> float | None:
    """new / old for two positive numbers, else None (a difference near 0, a yes/no)."""
    if isinstance(new, bool) or isinstance(old, bool):
        return None
    if isinstance(new, int | float) and isinstance(old, int | float) and old > 0:
        return float(new) / float(old)
    return None


def num(value: Any) -> str:
    """A value for the report: four significant digits, ratios close to 1 stay readable."""
    return fmt(value, 4)


def _median(values: list[Any]) -> float | None:
    """The median of numbers; None when there are none, or a value is not a number."""
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return None
    return float(statistics.median(values))


def verdict(median: float | None, way: str) -> str:
    """The median ratio in words."""
    if median is None:
        return "no ratio"
    if abs(median - 1) <= TOLERANCE:
        return f"same (within {TOLERANCE:.0%})"
    if way == "direction unknown":
        return "changed"
    better = (median < 1) == (way == "higher is worse")
    return f"new {'better' if better else 'worse'} by {abs(median - 1):.0%}"


def report(runs: list[dict[str, list[dict[str, Any]]]]) -> None:
    """Per metric: old, new and new/old per round, their medians, and the peer's drift."""
    metrics = list(
        dict.fromkeys(r["metric"] for run in runs for tree in ("new", "old") for r in run[tree])
    )
    summary = []
    for metric in metrics:
        way = direction(metric)
        print(f"\n{metric}  ({way})")
        ratios, peer_ratios, olds, news = [], [], [], []
        for i, run in enumerate(runs, 1):
            old = next((r for r in run["old"] if r["metric"] == metric), None)
            new = next((r for r in run["new"] if r["metric"] == metric), None)
            if old is None or new is None:
                print(f"  round {i}: only in the {'new' if old is None else 'old'} tree")
                continue
            r = ratio(new["ours"], old["ours"])
            p = ratio(new.get("peer"), old.get("peer"))
            olds.append(old["ours"])
            news.append(new["ours"])
            if r is not None:
                ratios.append(r)
            if p is not None:
                peer_ratios.append(p)
            peer = (
                f"   peer old {num(old.get('peer'))} new {num(new.get('peer'))} new/old {num(p)}"
                if p is not None
                else ""
            )
            print(
                f"  round {i}: old {num(old['ours'])}  new {num(new['ours'])}  "
                f"new/old {num(r)}{peer}"
            )
        median = statistics.median(ratios) if ratios else None
        peer_median = statistics.median(peer_ratios) if peer_ratios else None
        drift = f"; peer's new/old median {num(peer_median)}" if peer_median else ""
        print(f"  median new/old {num(median)}: {verdict(median, way)}{drift}")
        summary.append(
            [
                metric,
                way,
                num(_median(olds)),
                num(_median(news)),
                num(median),
                num(peer_median),
                verdict(median, way),
            ]
        )
    cols = ["metric", "unit says", "old median", "new median", "new/old", "peer new/old", ""]
    cells = [cols, *summary]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    print()
    for j, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    """Make the worktree, run the rounds alternating, report, remove the worktree."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    # Absolute: each run has its tree as cwd.
    logs = (opts.logs or Path(tempfile.mkdtemp(prefix="bench-compare-"))).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    head = git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    sha, old_tree = add_worktree(opts.old_ref)
    print(
        f"compare: section {opts.section}, {opts.rounds} rounds; old {sha[:10]} ({opts.old_ref}) "
        f"in {old_tree}, new: {ROOT} (HEAD {head}{dirty}); bench args {' '.join(opts.extra)}; "
        f"logs in {logs}",
        flush=True,
    )
    trees = {"old": old_tree, "new": ROOT}
    runs: list[dict[str, list[dict[str, Any]]]] = []
    failed: SystemExit | None = None
    try:
        for i in range(opts.rounds):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            got: dict[str, list[dict[str, Any]]] = {}
            for label in order:
                out = logs / f"{label}-{i + 1}.json"
                cmd = bench_command(trees[label], opts.python, opts.section, opts.extra, out)
                got[label], seconds = run_bench(
                    f"{label} round {i + 1}",
                    trees[label],
                    cmd,
                    logs / f"{label}-{i + 1}.log",
                    opts.timeout_s,
                )
                print(f"compare: round {i + 1}, {label}: {seconds:.0f} s", flush=True)
            runs.append(got)
    except SystemExit as exc:  # a run failed: report the rounds that completed
        failed = exc
    finally:
        remove_worktree(old_tree)
    if runs:
        report(runs)
    if failed is not None:
        raise failed


if __name__ == "__main__":
    main()
