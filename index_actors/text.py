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
import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from extractors.base import decode_doc
from index_actors.indexes import UnknownImage
from index_actors.store import FeatureStore

Hit = tuple[int, float]
#: The keys of an image's text document whose words are searchable: OCR text, a caption,
#: tags (a string, or a list of labels / ``{"label", "score"}``).
FIELDS = ("text", "caption", "tags")
#: Keys stored but not searched: OCR's words with confidence and box.
EXTRA_FIELDS = ("words",)
_WORD = re.compile(r"\w+")
#: Words of a query at most: a search by a stored image's text (a page of OCR) uses its
#: first ones; each word costs a pass over the vocabulary.
MAX_QUERY_WORDS = 64
#: metaphone keys are cut to this length (PostgreSQL's metaphone() needs one).
SOUND_LEN = 16


class TextUnavailable(RuntimeError):
    """The text backend cannot answer (PostgreSQL down): a 503, never a silent fallback."""


#: Longer "words" are OCR noise or pasted data, not words (and PostgreSQL's levenshtein
#: takes at most 255 characters).
MAX_WORD_LEN = 64


def words(text: str) -> list[str]:
    """Distinct lower-case words of ``text`` (letters and digits of any script), in order;
    lone digits and words over ``MAX_WORD_LEN`` characters left out."""
    return list(
        dict.fromkeys(
            w
            for w in _WORD.findall(text.lower())
            if (not w.isdigit() or len(w) > 1) and len(w) <= MAX_WORD_LEN
        )
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


def checked_doc(doc: Any) -> dict[str, Any]:
    """``doc`` (an image's text document) with known keys and well-formed values, empty
    values left out; ``ValueError`` otherwise."""
    if not isinstance(doc, dict):
        raise ValueError("a text document must be a JSON object")
    unknown = set(doc) - set(FIELDS) - set(EXTRA_FIELDS)
    if unknown:
        raise ValueError(f"unknown text fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    for key in ("text", "caption"):
        if not isinstance(doc.get(key, ""), str):
            raise ValueError(f"text field {key!r} must be a string")
    tags = doc.get("tags", [])
    if not isinstance(tags, str) and not (
        isinstance(tags, list)
        and all(
            isinstance(t, str) or (isinstance(t, dict) and isinstance(t.get("label"), str))
            for t in tags
        )
    ):
        raise ValueError("tags must be a string or a list of labels or {label, score}")
    if not isinstance(doc.get("words", []), list):
        raise ValueError("words must be a list")
    # NUL characters have no place in text, and PostgreSQL's jsonb refuses them.
    clean = json.loads(json.dumps(doc).replace("\\u0000", ""))
    return {k: v for k, v in clean.items() if v}


def labels(doc: dict[str, Any]) -> list[str]:
    """The tag labels of a text document."""
    tags = doc.get("tags", [])
    if isinstance(tags, str):
        return [t.strip() for t in tags.split(",") if t.strip()]
    return [t if isinstance(t, str) else t["label"] for t in tags]


def merge_docs(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One document from several features' (ImageNet and Places365 tags, OCR, a caption):
    tag lists are joined in order, other keys taken from the last that has them."""
    out: dict[str, Any] = {}
    tags: list[Any] = []
    for doc in docs:
        tags += labels(doc) if isinstance(doc.get("tags"), str) else doc.get("tags", [])
        out.update({k: v for k, v in doc.items() if k != "tags"})
    return {**out, "tags": tags} if tags else out


def doc_text(doc: dict[str, Any]) -> str:
    """The searchable text of a document: OCR text, caption and tag labels."""
    return " ".join([doc.get("text", ""), doc.get("caption", ""), *labels(doc)]).strip()


Doc = dict[str, Any]


class TextIndex(Protocol):
    """What both backends offer."""

    def add_many(self, items: list[tuple[int, Doc]]) -> None:
        """Store images' text documents (replacing earlier ones), all in one commit."""

    def add(self, image_id: int, doc: Doc) -> None:
        """Store one image's text document."""

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""

    def present(self, ids: list[int]) -> list[int]:
        """The ids that have a stored document."""

    def get(self, image_id: int) -> Doc | None:
        """An image's stored document, or None."""

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Images whose words match the query's, best first."""

    @property
    def count(self) -> int:
        """Images with a stored document."""

    def close(self) -> None:
        """Release the backend."""


class EmbeddedTextIndex:
    """Text documents in LMDB; vocabulary, postings and metaphone keys in memory."""

    def __init__(self, path: str | Path) -> None:
        self.store = FeatureStore(Path(path) / "lmdb")
        self._lock = threading.RLock()
        self.postings: dict[str, set[int]] = {}
        self.sounds: dict[str, set[str]] = {}
        self._vocabulary: list[str] | None = None
        for image_id, value in self.store.items():
            self._index(image_id, json.loads(bytes(value)))

    def _index(self, image_id: int, doc: Doc) -> None:
        for word in words(doc_text(doc)):
            self.postings.setdefault(word, set()).add(image_id)
            if key := sound(word):
                self.sounds.setdefault(key, set()).add(word)
        self._vocabulary = None

    def _unindex(self, image_id: int, doc: Doc) -> None:
        for word in words(doc_text(doc)):
            ids = self.postings.get(word)
            if ids is not None:
                ids.discard(image_id)
                if not ids:
                    del self.postings[word]
                    if (key := sound(word)) and key in self.sounds:
                        self.sounds[key].discard(word)
        self._vocabulary = None

    def add_many(self, items: list[tuple[int, Doc]]) -> None:
        """Store documents; LMDB commits before the in-memory index changes."""
        docs = {image_id: checked_doc(doc) for image_id, doc in items}
        with self._lock:
            old = {i: d for i in docs if (d := self.get(i)) is not None}
            self.store.put([(i, json.dumps(d).encode()) for i, d in docs.items()])
            for image_id, doc in docs.items():
                if image_id in old:
                    self._unindex(image_id, old[image_id])
                self._index(image_id, doc)

    def add(self, image_id: int, doc: Doc) -> None:
        """Store one image's document."""
        self.add_many([(image_id, doc)])

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""
        with self._lock:
            old = {i: d for i in ids if (d := self.get(i)) is not None}
            removed = self.store.delete(ids)
            for image_id in removed:
                self._unindex(image_id, old[image_id])
            return removed

    def present(self, ids: list[int]) -> list[int]:
        """The ids that have a stored document."""
        return self.store.present(ids)

    def get(self, image_id: int) -> Doc | None:
        """An image's stored document, or None."""
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
        """Images with a stored document."""
        return self.store.count()

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self.store.close()


#: Tables of one text feature, prefixed with its name (``{t}``): each feature (OCR text,
#: captions, tags) has its own, so that each is a source of its own in fused search.
_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;
CREATE TABLE IF NOT EXISTS {t}_docs (image_id bigint PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {t}_words (
    image_id bigint NOT NULL REFERENCES {t}_docs ON DELETE CASCADE,
    word text NOT NULL
);
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
SELECT found.i, found.word, w.image_id
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
        """Store documents and their words in one transaction."""
        docs = {image_id: checked_doc(doc) for image_id, doc in items}
        found = {i: words(doc_text(d)) for i, d in docs.items()}
        vocab = sorted({w for ws in found.values() for w in ws})
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
                cur.executemany(
                    self._sql("INSERT INTO {t}_words VALUES (%s, %s)"),
                    [(i, w) for i, ws in found.items() for w in ws],
                )

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
        for q1, word, image_id in got:
            q = int(q1) - 1
            same = bool(sounds[q]) and sound(word) == sounds[q]
            score = word_score(int(OSA.distance(wanted[q], word)), limits[q], same)
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


class TextFeatureIndex:
    """The ``text`` index kind, as an index actor hosts it: one text feature's documents
    (OCR text, captions or tags) in its backend, behind the other kinds' interface.

    The backend is PostgreSQL when ``dsn`` is set (tables prefixed ``table``), else the
    embedded one at ``path``. Features arrive encoded (``extractors.base.encode_doc``).
    A query is a text, or a text feature (an image's own text, caption or tags).
    """

    LIVE: tuple[str, ...] = ()

    def __init__(
        self, path: str | Path, dim: int = 0, dsn: str | None = None, table: str | None = None
    ) -> None:
        self.backend: TextIndex = (
            PostgresTextIndex(dsn, table or Path(path).name) if dsn else EmbeddedTextIndex(path)
        )

    @property
    def live(self) -> dict[str, Any]:
        """No live settings."""
        return {}

    def configure(self, **live: Any) -> None:
        """Text indexes have no live settings."""
        if live:
            raise ValueError(f"not live settings: {sorted(live)}; a text index has none")

    @staticmethod
    def _docs(features: Any) -> list[Doc]:
        """Documents of encoded features: one (1-D uint8), rows of a 2-D array, or a list or
        object array of them (Ray Data's ragged column)."""
        one = isinstance(features, np.ndarray) and features.ndim == 1 and features.dtype != object
        return [decode_doc(np.asarray(row)) for row in ([features] if one else list(features))]

    def add(self, ids: list[int], features: Any) -> int:
        """Store the documents of ``ids`` (replacing), committed before this returns."""
        docs = self._docs(features)
        if len(docs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(docs)} documents")
        self.backend.add_many(list(zip(ids, docs, strict=True)))
        return len(ids)

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""
        return self.backend.remove(ids)

    def has(self, ids: list[int]) -> list[int]:
        """The ids that have a stored document."""
        return self.backend.present(ids)

    def docs(self, ids: list[int]) -> dict[int, Doc]:
        """The stored documents of those ids that have one."""
        return {i: d for i in ids if (d := self.backend.get(i)) is not None}

    @property
    def count(self) -> int:
        """Images with a stored document."""
        return self.backend.count

    def search(
        self,
        queries: Any,
        k: int | None = 20,
        threshold: float | None = None,
        exclude: int | None = None,
    ) -> list[Hit]:
        """Images matching a text (or a text feature's words): best first, at most ``k``;
        with ``threshold`` only those at a distance <= it (0 all words exact, 1 none)."""
        text = queries if isinstance(queries, str) else doc_text(self._docs(queries)[0])
        wanted = query_words(text)[:MAX_QUERY_WORDS]
        want = (k if k is not None else 10_000) + (exclude is not None)
        hits = [
            h
            for h in self.backend.search(" ".join(wanted), want)
            if h[0] != exclude and (threshold is None or h[1] <= threshold)
        ]
        return hits[:k] if k is not None else hits

    def search_by_id(
        self, image_id: int, k: int | None = 20, threshold: float | None = None
    ) -> list[Hit]:
        """Images whose words match a stored image's (the image itself left out); none when
        it has no words. ``UnknownImage`` when it has no document."""
        doc = self.backend.get(image_id)
        if doc is None:
            raise UnknownImage(image_id)
        if not words(doc_text(doc)):
            return []
        return self.search(doc_text(doc), k, threshold, exclude=image_id)

    def snapshot(self) -> bool:
        """Nothing to snapshot: the backend is its own store."""
        return False

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()


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
