"""The PostgreSQL text backend: tables of image fields, image words (their own, and their
tags' broader words, flagged) and the vocabulary (word, length, metaphone key);
``fuzzystrmatch``'s ``levenshtein_less_equal`` finds the misspellings among words of a close
length, an index on the key the sound-alikes."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from rapidfuzz.distance import OSA

from extractors.textdoc import Doc, checked_doc, query_words
from index_actors.text_match import (
    Hit,
    TextUnavailable,
    broader_score,
    indexed_words,
    max_edits,
    rank,
    sound,
    word_score,
)

#: Tables of one text feature, prefixed with its name (``{t}``): each feature (OCR text,
#: captions, tags) has its own, so that each is a source of its own in fused search.
_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;
CREATE TABLE IF NOT EXISTS {t}_docs (image_id bigint PRIMARY KEY, doc jsonb NOT NULL);
-- broader: a broader word of the image's tags (a hypernym), not one of its own words.
CREATE TABLE IF NOT EXISTS {t}_words (
    image_id bigint NOT NULL REFERENCES {t}_docs ON DELETE CASCADE,
    word text NOT NULL,
    broader boolean NOT NULL DEFAULT false
);
-- Tables from before broader words: their images gain them when stored again.
ALTER TABLE {t}_words ADD COLUMN IF NOT EXISTS broader boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS {t}_words_word ON {t}_words (word);
CREATE INDEX IF NOT EXISTS {t}_words_image ON {t}_words (image_id);
-- The vocabulary: each distinct word once, with its length and metaphone key.
CREATE TABLE IF NOT EXISTS {t}_vocab (
    word text PRIMARY KEY,
    len int NOT NULL,
    sound text NOT NULL
);
CREATE INDEX IF NOT EXISTS {t}_vocab_len ON {t}_vocab (len);
CREATE INDEX IF NOT EXISTS {t}_vocab_sound ON {t}_vocab (sound) WHERE sound <> '';
"""

#: Per query word, the vocabulary's words with its metaphone key, or of a close length and
#: within twice its edits: PostgreSQL's levenshtein counts a transposition as two edits, so
#: the candidates are measured again here as the embedded index does (OSA). The keys are
#: jellyfish's on both sides (computed here), so both backends agree on sound-alikes.
_SEARCH = """
WITH q AS (
    SELECT * FROM unnest(%(words)s::text[], %(limits)s::int[], %(sounds)s::text[])
        WITH ORDINALITY AS q(word, lim, sound, i)
), found AS (
    SELECT q.i, v.word
    FROM q JOIN {t}_vocab v
      ON v.word = q.word
      OR (q.lim > 0 AND v.len BETWEEN length(q.word) - q.lim AND length(q.word) + q.lim
          AND levenshtein_less_equal(q.word, v.word, 2 * q.lim) <= 2 * q.lim)
      OR (q.sound <> '' AND v.sound = q.sound)
)
SELECT found.i, found.word, w.image_id, w.broader
FROM found JOIN {t}_words w ON w.word = found.word
"""
TABLE_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,50}")  # + "_vocab_sound": 63, PostgreSQL's limit


class PostgresTextIndex:
    """Text documents and words in PostgreSQL (``dsn``: a libpq connection string), in the
    tables named ``{table}_docs``, ``{table}_words`` and ``{table}_vocab``.

    Nothing is checked at construction: while the server is down every call raises
    ``TextUnavailable``, and the first call that reaches it creates the tables.
    """

    def __init__(self, dsn: str, table: str = "text") -> None:
        if not TABLE_PREFIX.fullmatch(table):
            raise ValueError(f"table prefix {table!r}: lower-case letters, digits, _")
        self.dsn = dsn
        self.table = table
        self._lock = threading.RLock()
        self._conn: Any = None

    def _db(self) -> Any:
        """The connection (re-opened after a failure), as a context that maps errors."""
        return _Session(self)

    def _connect(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            try:
                # A server restart breaks the connection silently: found here, the call
                # gets a fresh one instead of an error (a round trip, well under 1 ms).
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self._conn.close()
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=5,
                    # A hung server or a held lock must end in an error, not in a call that
                    # holds this index's lock (and every actor thread behind it) for ever.
                    options="-c statement_timeout=30000 -c lock_timeout=10000",
                    keepalives=1,
                    keepalives_idle=30,
                )
            except psycopg.Error as exc:
                raise TextUnavailable(f"PostgreSQL is unreachable: {_first_line(exc)}") from None
            try:
                # Several features' actors create their tables at the same moment on a first
                # start: CREATE EXTENSION IF NOT EXISTS is not safe against that, so one at
                # a time.
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(8675309)")
                    conn.execute(self._sql(_SCHEMA))
            except psycopg.Error as exc:
                conn.close()
                raise TextUnavailable(
                    f"PostgreSQL refused the schema: {_first_line(exc)}"
                ) from None
            self._conn = conn
        return self._conn

    def _sql(self, template: str) -> Any:
        from psycopg import sql

        return sql.SQL(template.replace("{t}", self.table))

    def add_many(self, items: list[tuple[int, Doc]]) -> None:
        """Store documents and their words (their own and their tags' broader ones) in one
        transaction."""
        docs = {image_id: checked_doc(doc) for image_id, doc in items}
        rows = [
            (i, w, broader)
            for i, d in docs.items()
            for found, broader in zip(indexed_words(d), (False, True), strict=True)
            for w in found
        ]
        vocab = sorted({w for _, w, _ in rows})
        with self._db() as db, db.transaction(), db.cursor() as cur:
            cur.execute(self._sql("DELETE FROM {t}_docs WHERE image_id = ANY(%s)"), (list(docs),))
            cur.executemany(
                self._sql("INSERT INTO {t}_docs VALUES (%s, %s)"),
                [(i, json.dumps(d)) for i, d in docs.items()],
            )
            if vocab:
                cur.executemany(
                    self._sql("INSERT INTO {t}_vocab VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"),
                    [(w, len(w), sound(w)) for w in vocab],
                )
                cur.executemany(self._sql("INSERT INTO {t}_words VALUES (%s, %s, %s)"), rows)

    def add(self, image_id: int, doc: Doc) -> None:
        """Store one image's document."""
        self.add_many([(image_id, doc)])

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""
        with self._db() as db:
            got = db.execute(
                self._sql("DELETE FROM {t}_docs WHERE image_id = ANY(%s) RETURNING image_id"),
                (ids,),
            ).fetchall()
        return sorted(i for (i,) in got)

    def present(self, ids: list[int]) -> list[int]:
        """The ids that have a stored document."""
        with self._db() as db:
            got = db.execute(
                self._sql("SELECT image_id FROM {t}_docs WHERE image_id = ANY(%s)"), (ids,)
            ).fetchall()
        return sorted(i for (i,) in got)

    def get(self, image_id: int) -> Doc | None:
        """An image's stored document, or None."""
        with self._db() as db:
            got = db.execute(
                self._sql("SELECT doc FROM {t}_docs WHERE image_id = %s"), (image_id,)
            ).fetchone()
        return dict(got[0]) if got else None

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Exact, misspelt (OSA edits within ``max_edits``) and sound-alike matches."""
        wanted = query_words(query)
        limits = [max_edits(w) for w in wanted]
        sounds = [sound(w) for w in wanted]
        with self._db() as db:
            params = {"words": wanted, "limits": limits, "sounds": sounds}
            got = db.execute(self._sql(_SEARCH), params).fetchall()
        matches = []
        for q1, word, image_id, broader in got:
            q = int(q1) - 1
            edits = int(OSA.distance(wanted[q], word))
            if broader:
                score = broader_score(edits, limits[q])
            else:
                score = word_score(edits, limits[q], bool(sounds[q]) and sound(word) == sounds[q])
            if score > 0:
                matches.append((q, int(image_id), score))
        return rank(len(wanted), matches, k)

    @property
    def count(self) -> int:
        """Images with a stored document."""
        with self._db() as db:
            return int(db.execute(self._sql("SELECT count(*) FROM {t}_docs")).fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class _Session:
    """``with index._db() as db``: the lock, a live connection, and PostgreSQL's connection
    errors as ``TextUnavailable`` (the connection is dropped, the next call reconnects)."""

    def __init__(self, index: PostgresTextIndex) -> None:
        self.index = index

    def __enter__(self) -> Any:
        self.index._lock.acquire()
        try:
            return self.index._connect()
        except BaseException:
            self.index._lock.release()
            raise

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import psycopg

        try:
            if isinstance(exc, psycopg.OperationalError):
                if self.index._conn is not None:
                    self.index._conn.close()
                raise TextUnavailable(f"PostgreSQL failed: {_first_line(exc)}") from None
            if isinstance(exc, psycopg.Error):  # a server-side refusal: said as such
                raise TextUnavailable(f"PostgreSQL refused: {_first_line(exc)}") from None
        finally:
            self.index._lock.release()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
