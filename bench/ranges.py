"""ranges: descriptor id -> image id lookups per second, our ``RangeMap`` (sorted starts,
``np.searchsorted``) against a PostgreSQL GiST ``int4range`` table, the seed's way (a
throwaway server, when PostgreSQL is installed), batched and one id per call."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Row, row
from index_actors.ranges import RangeMap


def bench_ranges(n_images: int, per_image: int, seconds: float) -> list[Row]:
    """descriptor id -> image id: RangeMap against PostgreSQL GiST int4range lookups."""
    ranges = RangeMap()
    counts = np.random.default_rng(0).integers(per_image // 2, per_image + 1, n_images)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranges.load(zip(range(n_images), starts.tolist(), counts.tolist(), strict=True))
    total = int(counts.sum())
    ids = np.random.default_rng(1).integers(0, total, 1_000_000)
    start = time.perf_counter()
    found = ranges.lookup(ids)
    ours = len(ids) / (time.perf_counter() - start)
    assert (found >= 0).all()
    rows = [row("ranges: RangeMap lookups/s (1M ids, one call)", ours, None, "info", None)]
    single = ours_single = None
    try:
        import psycopg

        from scripts.pgserver import NoPostgres, pg_server
    except ImportError as exc:
        print(f"ranges: no PostgreSQL comparison ({exc})")
        return rows
    # One id per call as a search asks for each neighbour: our map through the same loop.
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ranges.lookup(ids[n : n + 1])
        n += 1
    ours_single = n / (time.perf_counter() - start)
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(folder, 0o755)  # the server runs as the postgres user
    try:
        with pg_server(folder / "pg") as dsn, psycopg.connect(dsn, autocommit=True) as db:
            db.execute("CREATE TABLE ranges (image_id int, ids int4range)")
            with db.cursor().copy("COPY ranges FROM STDIN") as copy:
                for i, (s, c) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
                    copy.write_row((i, f"[{s},{s + c})"))
            db.execute("CREATE INDEX ranges_gist ON ranges USING gist (ids)")
            db.execute("ANALYZE ranges")
            query = "SELECT image_id FROM ranges WHERE ids @> %s::int"
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                db.execute(query, (int(ids[n]),)).fetchone()
                n += 1
            single = n / (time.perf_counter() - start)
            batch = ids[:20_000].tolist()
            start = time.perf_counter()
            got = db.execute(
                "SELECT r.image_id FROM unnest(%s::int[]) WITH ORDINALITY q(id, o) "
                "JOIN ranges r ON r.ids @> q.id ORDER BY q.o",
                (batch,),
            ).fetchall()
            batched = len(batch) / (time.perf_counter() - start)
            assert [g for (g,) in got] == found[: len(batch)].tolist()
    except NoPostgres as exc:
        print(f"ranges: no PostgreSQL comparison ({exc})")
        return rows
    print(
        f"ranges: RangeMap {ours:,.0f}/s batched, {ours_single:,.0f}/s one by one; "
        f"PostgreSQL GiST {single:,.0f}/s one by one, {batched:,.0f}/s batched"
    )
    return [
        row(
            "ranges: lookups/s batched, RangeMap (peer PostgreSQL GiST)",
            ours,
            batched,
            "info",
            None,
        ),
        row(
            "ranges: lookups/s one id per call, RangeMap (peer GiST)",
            ours_single,
            single,
            "info",
            None,
        ),
    ]
