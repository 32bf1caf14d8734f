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
over the query words; the distance is 1 - that score. Both also match the broader words of
an image's tags (WordNet's hypernyms, ``extractors/hypernyms.json``: "flower" and "plant"
for a daisy), below a match of its own words and only as spelt or one edit off
(``broader_score``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

from extractors.textdoc import (
    MAX_QUERY_WORDS,
    Doc,
    checked_doc,
    decode_doc,
    doc_text,
    query_words,
    words,
)
from index_actors.interface import UnknownImage
from index_actors.store import FeatureStore
from index_actors.text_match import (
    Hit,
    TextIndex,
    broader_score,
    indexed_words,
    max_edits,
    rank,
    sound,
    word_score,
)
from index_actors.text_pg import PostgresTextIndex


class EmbeddedTextIndex:
    """Text documents in LMDB; vocabulary, postings and metaphone keys in memory. The
    broader words of tags (``indexed_words``) have postings of their own, computed from the
    shipped table as documents are indexed: the stored documents stay as given."""

    def __init__(self, path: str | Path) -> None:
        self.store = FeatureStore(Path(path) / "lmdb")
        self._lock = threading.RLock()
        self.postings: dict[str, set[int]] = {}
        self.broader: dict[str, set[int]] = {}
        self.sounds: dict[str, set[str]] = {}
        self._vocabulary: list[str] | None = None
        for image_id, value in self.store.items():
            self._index(image_id, json.loads(bytes(value)))

    def _index(self, image_id: int, doc: Doc) -> None:
        own, broader = indexed_words(doc)
        for word in own:
            self.postings.setdefault(word, set()).add(image_id)
            if key := sound(word):
                self.sounds.setdefault(key, set()).add(word)
        for word in broader:  # no sound-alikes (``broader_score``)
            self.broader.setdefault(word, set()).add(image_id)
        self._vocabulary = None

    def _unindex(self, image_id: int, doc: Doc) -> None:
        own, broader = indexed_words(doc)
        for postings, found in ((self.postings, own), (self.broader, broader)):
            for word in found:
                ids = postings.get(word)
                if ids is not None:
                    ids.discard(image_id)
                    if not ids:
                        del postings[word]
                        if postings is self.postings and (key := sound(word)) in self.sounds:
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
                self._vocabulary = list(self.postings.keys() | self.broader.keys())
            for q, word in enumerate(wanted):
                limit = max_edits(word)
                found = {word: 0} if word in self.postings or word in self.broader else {}
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
                    matches += [(q, i, score) for i in self.postings.get(other, ())]
                    if (broader := broader_score(edits, limit)) > 0:
                        matches += [(q, i, broader) for i in self.broader.get(other, ())]
        return rank(len(wanted), matches, k)

    @property
    def count(self) -> int:
        """Images with a stored document."""
        return self.store.count()

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self.store.close()


class TextFeatureIndex:
    """The ``text`` index kind, as an index actor hosts it: one text feature's documents
    (OCR text, captions or tags) in its backend, behind the other kinds' interface.

    The backend is PostgreSQL when ``dsn`` is set (tables prefixed ``table``), else the
    embedded one at ``path``. Features arrive encoded (``extractors.textdoc.encode_doc``).
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
    def store(self) -> FeatureStore:
        """The embedded backend's store (a reshard reads it); PostgreSQL is not sharded."""
        if not isinstance(self.backend, EmbeddedTextIndex):
            raise ValueError("a text index in PostgreSQL has no shards to move")
        return self.backend.store

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

    def query_of(self, image_id: int) -> str | None:
        """A stored image's text as a query (None when it has no words); ``UnknownImage``
        when it has no document."""
        doc = self.backend.get(image_id)
        if doc is None:
            raise UnknownImage(image_id)
        return doc_text(doc) if words(doc_text(doc)) else None

    def search_by_id(
        self, image_id: int, k: int | None = 20, threshold: float | None = None
    ) -> list[Hit]:
        """Images whose words match a stored image's (the image itself left out); none when
        it has no words. ``UnknownImage`` when it has no document."""
        query = self.query_of(image_id)
        return [] if query is None else self.search(query, k, threshold, exclude=image_id)

    def describe(self) -> dict[str, Any]:
        """The count (no live settings, no trained index)."""
        return {"count": self.count}

    def sample(self, n: int, seed: int = 0) -> Any:
        """Text takes no trained index."""
        raise ValueError("a text index takes no trained index")

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Text takes no trained index."""
        raise ValueError("a text index takes no trained index")

    def snapshot(self) -> bool:
        """Nothing to snapshot: the backend is its own store."""
        return False

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
