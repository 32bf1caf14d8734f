"""The text index: each image's words (OCR text, caption, tags), found by exact, misspelt
(a few edits) and sound-alike (metaphone) query words. Ray-free, two backends behind one
interface:

- ``EmbeddedTextIndex`` (default, no server): LMDB holds each image's fields; the vocabulary,
  its postings and metaphone keys live in memory, rebuilt on start; rapidfuzz finds the
  words within a few edits.
- ``PostgresTextIndex``: tables of image fields, image words and the vocabulary (word,
  length, metaphone key); ``fuzzystrmatch``'s ``levenshtein_less_equal`` finds the
  misspellings among words of a close length, an index on the key the sound-alikes.

Both score alike (``word_score``): per query word its best match in the image, averaged
over the query words; the distance is 1 - that score.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import jellyfish
from rapidfuzz import process
from rapidfuzz.distance import OSA

from index_actors.store import FeatureStore

Hit = tuple[int, float]
#: The fields an image's text comes in.
FIELDS = ("text", "caption", "tags")
_WORD = re.compile(r"\w+")
#: metaphone keys are cut to this length (PostgreSQL's metaphone() needs one).
SOUND_LEN = 16


class TextUnavailable(RuntimeError):
    """The text backend cannot answer (PostgreSQL down): a 503, never a silent fallback."""


def words(text: str) -> list[str]:
    """Distinct lower-case words of ``text`` (letters and digits of any script), in order."""
    return list(
        dict.fromkeys(w for w in _WORD.findall(text.lower()) if not w.isdigit() or len(w) > 1)
    )


def max_edits(word: str) -> int:
    """Edits a misspelt query word may be from the stored one: none up to 3 letters, 1 for
    4, 2 from 5 (a 6-letter word with a letter dropped is a 5-letter query)."""
    return 0 if len(word) <= 3 else 1 if len(word) == 4 else 2


def sound(word: str) -> str:
    """The metaphone key of a Latin-letter word ("" for others: no phonetic match)."""
    if not (word.isascii() and word.isalpha()):
        return ""
    return jellyfish.metaphone(word)[:SOUND_LEN]


def word_score(edits: int, limit: int, same_sound: bool) -> float:
    """How well a stored word matches a query word: 1 exact, 0.75 / 0.5 for one / two edits
    (within ``limit``), 0.6 for a sound-alike, 0 otherwise."""
    by_edits = 1.0 - 0.25 * edits if edits <= limit else 0.0
    return max(by_edits, 0.6 if same_sound else 0.0)


def rank(n_words: int, matches: Iterable[tuple[int, int, float]], k: int) -> list[Hit]:
    """Hits from (query word index, image id, score) matches: per image the best score per
    query word, averaged over the ``n_words`` query words; distance = 1 - that."""
    best: dict[int, dict[int, float]] = {}
    for q, image_id, score in matches:
        per = best.setdefault(image_id, {})
        per[q] = max(per.get(q, 0.0), score)
    hits = [(i, 1.0 - sum(per.values()) / n_words) for i, per in best.items()]
    return sorted(hits, key=lambda h: (h[1], h[0]))[:k]


def query_words(query: str) -> list[str]:
    """The words of a query; ``ValueError`` when there are none (punctuation only)."""
    found = words(query)
    if not found:
        raise ValueError("the query has no words to search for")
    return found


def checked_fields(fields: dict[str, str]) -> dict[str, str]:
    """``fields`` with known names and string values; ``ValueError`` otherwise."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown text fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    if not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("text fields must be strings")
    return {k: v for k, v in fields.items() if v}


class TextIndex(Protocol):
    """What both backends offer."""

    def add(self, image_id: int, fields: dict[str, str]) -> None:
        """Store an image's text fields (replacing earlier ones)."""

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""

    def get(self, image_id: int) -> dict[str, str] | None:
        """An image's stored fields, or None."""

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Images whose words match the query's, best first."""

    @property
    def count(self) -> int:
        """Images with stored text."""

    def close(self) -> None:
        """Release the backend."""


class EmbeddedTextIndex:
    """Text fields in LMDB; vocabulary, postings and metaphone keys in memory."""

    def __init__(self, path: str | Path) -> None:
        self.store = FeatureStore(Path(path) / "lmdb")
        self._lock = threading.RLock()
        self.postings: dict[str, set[int]] = {}
        self.sounds: dict[str, set[str]] = {}
        self._vocabulary: list[str] | None = None
        for image_id, value in self.store.items():
            self._index(image_id, json.loads(bytes(value)))

    def _index(self, image_id: int, fields: dict[str, str]) -> None:
        for word in words(" ".join(fields.values())):
            self.postings.setdefault(word, set()).add(image_id)
            if key := sound(word):
                self.sounds.setdefault(key, set()).add(word)
        self._vocabulary = None

    def _unindex(self, image_id: int, fields: dict[str, str]) -> None:
        for word in words(" ".join(fields.values())):
            ids = self.postings.get(word)
            if ids is not None:
                ids.discard(image_id)
                if not ids:
                    del self.postings[word]
                    if (key := sound(word)) and key in self.sounds:
                        self.sounds[key].discard(word)
        self._vocabulary = None

    def add(self, image_id: int, fields: dict[str, str]) -> None:
        """Store an image's text fields; LMDB commits before the in-memory index changes."""
        fields = checked_fields(fields)
        with self._lock:
            old = self.get(image_id)
            self.store.put([(image_id, json.dumps(fields).encode())])
            if old is not None:
                self._unindex(image_id, old)
            self._index(image_id, fields)

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""
        with self._lock:
            old = {i: f for i in ids if (f := self.get(i)) is not None}
            removed = self.store.delete(ids)
            for image_id in removed:
                self._unindex(image_id, old[image_id])
            return removed

    def get(self, image_id: int) -> dict[str, str] | None:
        """An image's stored fields, or None."""
        raw = self.store.get(image_id)
        return json.loads(raw) if raw is not None else None

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Exact, misspelt (OSA edits, ``max_edits``) and sound-alike matches of each word."""
        wanted = query_words(query)
        matches: list[tuple[int, int, float]] = []
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = list(self.postings)
            for q, word in enumerate(wanted):
                limit = max_edits(word)
                found = {word: 0} if word in self.postings else {}
                if limit:
                    for other, edits, _ in process.extract(
                        word, self._vocabulary, scorer=OSA.distance, score_cutoff=limit, limit=None
                    ):
                        found[other] = int(edits)
                key = sound(word)
                for other in self.sounds.get(key, ()) if key else ():
                    found.setdefault(other, limit + 1)
                for other, edits in found.items():
                    score = word_score(edits, limit, bool(key) and sound(other) == key)
                    matches += [(q, i, score) for i in self.postings[other]]
        return rank(len(wanted), matches, k)

    @property
    def count(self) -> int:
        """Images with stored text."""
        return self.store.count()

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self.store.close()


_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;
CREATE TABLE IF NOT EXISTS image_text (image_id bigint PRIMARY KEY, fields jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS image_words (
    image_id bigint NOT NULL REFERENCES image_text ON DELETE CASCADE,
    word text NOT NULL
);
CREATE INDEX IF NOT EXISTS image_words_word ON image_words (word);
CREATE INDEX IF NOT EXISTS image_words_image ON image_words (image_id);
-- The vocabulary: each distinct word once, with its length and metaphone key.
CREATE TABLE IF NOT EXISTS text_words (
    word text PRIMARY KEY,
    len int NOT NULL,
    sound text NOT NULL
);
CREATE INDEX IF NOT EXISTS text_words_len ON text_words (len);
CREATE INDEX IF NOT EXISTS text_words_sound ON text_words (sound) WHERE sound <> '';
"""

#: Per query word, the vocabulary's words with its metaphone key, or of a close length and
#: within its edits plus one: PostgreSQL's levenshtein counts a transposition as two edits,
#: so the candidates are measured again here as the embedded index does (OSA). The keys are
#: jellyfish's on both sides (computed here), so both backends agree on sound-alikes.
_SEARCH = """
WITH q AS (
    SELECT * FROM unnest(%(words)s::text[], %(limits)s::int[], %(sounds)s::text[])
        WITH ORDINALITY AS q(word, lim, sound, i)
), found AS (
    SELECT q.i, v.word
    FROM q JOIN text_words v
      ON v.word = q.word
      OR (q.lim > 0 AND v.len BETWEEN length(q.word) - q.lim AND length(q.word) + q.lim
          AND levenshtein_less_equal(q.word, v.word, q.lim + 1) <= q.lim + 1)
      OR (q.sound <> '' AND v.sound = q.sound)
)
SELECT found.i, found.word, w.image_id
FROM found JOIN image_words w ON w.word = found.word
"""


class PostgresTextIndex:
    """Text fields and words in PostgreSQL (``dsn``: a libpq connection string)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._lock = threading.RLock()
        self._conn: Any = None
        with self._db() as db:
            db.execute(_SCHEMA)

    def _db(self) -> Any:
        """The connection (re-opened after a failure), as a context that maps errors."""
        return _Session(self)

    def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.Error as exc:
                raise TextUnavailable(f"PostgreSQL is unreachable: {_first_line(exc)}") from None
        return self._conn

    def add(self, image_id: int, fields: dict[str, str]) -> None:
        """Store an image's text fields and words in one transaction."""
        fields = checked_fields(fields)
        found = words(" ".join(fields.values()))
        with self._db() as db, db.transaction():
            db.execute("DELETE FROM image_text WHERE image_id = %s", (image_id,))
            db.execute("INSERT INTO image_text VALUES (%s, %s)", (image_id, json.dumps(fields)))
            if found:
                with db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO text_words VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        [(w, len(w), sound(w)) for w in found],
                    )
                    cur.executemany(
                        "INSERT INTO image_words VALUES (%s, %s)", [(image_id, w) for w in found]
                    )

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""
        with self._db() as db:
            got = db.execute(
                "DELETE FROM image_text WHERE image_id = ANY(%s) RETURNING image_id", (ids,)
            ).fetchall()
        return sorted(i for (i,) in got)

    def get(self, image_id: int) -> dict[str, str] | None:
        """An image's stored fields, or None."""
        with self._db() as db:
            got = db.execute(
                "SELECT fields FROM image_text WHERE image_id = %s", (image_id,)
            ).fetchone()
        return dict(got[0]) if got else None

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Exact, misspelt (OSA edits within ``max_edits``) and sound-alike matches."""
        wanted = query_words(query)
        limits = [max_edits(w) for w in wanted]
        sounds = [sound(w) for w in wanted]
        with self._db() as db:
            params = {"words": wanted, "limits": limits, "sounds": sounds}
            got = db.execute(_SEARCH, params).fetchall()
        matches = []
        for q1, word, image_id in got:
            q = int(q1) - 1
            same = bool(sounds[q]) and sound(word) == sounds[q]
            score = word_score(int(OSA.distance(wanted[q], word)), limits[q], same)
            if score > 0:
                matches.append((q, int(image_id), score))
        return rank(len(wanted), matches, k)

    @property
    def count(self) -> int:
        """Images with stored text."""
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM image_text").fetchone()[0])

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
        finally:
            self.index._lock.release()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
